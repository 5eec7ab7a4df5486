//! The array fields of `mget` and `mset`, validated once at decode time and then
//! iterated straight from the payload (no `Vec` per request).
//!
//! Owns the element checks and their messages (`keys[{i}] must be a string`,
//! `entries[{i}] must be a [key, value] pair with a string key`). Invariant: a
//! list built by `decode` yields exactly `len()` items, all valid.

use std::borrow::Cow;

use crate::value::Items;
use crate::{DecodeError, Raw};

/// The string keys of an `mget`: validated at decode time, iterated without a copy.
#[derive(Debug, Clone, Copy)]
pub struct KeyList<'a>(KeySource<'a>);

#[derive(Debug, Clone, Copy)]
enum KeySource<'a> {
    /// An array on the wire whose `len` elements are all strings.
    Wire { raw: Raw<'a>, len: usize },
    /// Keys given by an encoder.
    Strs(&'a [&'a str]),
}

impl<'a> KeyList<'a> {
    /// Keys to encode.
    pub fn from_strs(keys: &'a [&'a str]) -> Self {
        KeyList(KeySource::Strs(keys))
    }

    /// Validates a decoded `keys` field: an array of strings.
    pub(super) fn decode(keys: Raw<'a>) -> Result<Self, DecodeError> {
        let items = keys
            .array()
            .ok_or_else(|| DecodeError::new("field `keys` must be an array"))?;
        let mut len = 0;
        for (i, item) in items.enumerate() {
            if !item.is_str() {
                return Err(DecodeError::new(format!("keys[{i}] must be a string")));
            }
            len += 1;
        }
        Ok(KeyList(KeySource::Wire { raw: keys, len }))
    }

    /// Number of keys.
    #[inline]
    pub fn len(&self) -> usize {
        match self.0 {
            KeySource::Wire { len, .. } => len,
            KeySource::Strs(s) => s.len(),
        }
    }

    /// True when there are no keys.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys, in order.
    #[inline]
    pub fn iter(&self) -> KeyIter<'a> {
        match self.0 {
            KeySource::Wire { raw, len } => KeyIter {
                inner: KeyIterInner::Wire(raw.array().expect("invariant: validated array")),
                left: len,
            },
            KeySource::Strs(s) => KeyIter {
                inner: KeyIterInner::Strs(s.iter()),
                left: s.len(),
            },
        }
    }
}

impl PartialEq for KeyList<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<'a> IntoIterator for KeyList<'a> {
    type Item = Cow<'a, str>;
    type IntoIter = KeyIter<'a>;
    fn into_iter(self) -> KeyIter<'a> {
        self.iter()
    }
}

impl<'a> IntoIterator for &KeyList<'a> {
    type Item = Cow<'a, str>;
    type IntoIter = KeyIter<'a>;
    fn into_iter(self) -> KeyIter<'a> {
        self.iter()
    }
}

/// Iterator over a [`KeyList`].
#[derive(Debug, Clone)]
pub struct KeyIter<'a> {
    inner: KeyIterInner<'a>,
    left: usize,
}

#[derive(Debug, Clone)]
enum KeyIterInner<'a> {
    Wire(Items<'a>),
    Strs(std::slice::Iter<'a, &'a str>),
}

impl<'a> Iterator for KeyIter<'a> {
    type Item = Cow<'a, str>;

    #[inline]
    fn next(&mut self) -> Option<Cow<'a, str>> {
        let k = match &mut self.inner {
            KeyIterInner::Wire(items) => items.next()?.as_str()?,
            KeyIterInner::Strs(s) => Cow::Borrowed(*s.next()?),
        };
        self.left -= 1;
        Some(k)
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for KeyIter<'_> {}

/// The `[key, value]` pairs of an `mset`: validated at decode time, iterated
/// without a copy.
#[derive(Debug, Clone, Copy)]
pub struct EntryList<'a>(EntrySource<'a>);

#[derive(Debug, Clone, Copy)]
enum EntrySource<'a> {
    /// An array on the wire whose `len` elements are all `[string, value]` pairs.
    Wire { raw: Raw<'a>, len: usize },
    /// Pairs given by an encoder.
    Pairs(&'a [(&'a str, Raw<'a>)]),
}

impl<'a> EntryList<'a> {
    /// Pairs to encode.
    pub fn from_pairs(pairs: &'a [(&'a str, Raw<'a>)]) -> Self {
        EntryList(EntrySource::Pairs(pairs))
    }

    /// Validates a decoded `entries` field.
    pub(super) fn decode(entries: Raw<'a>) -> Result<Self, DecodeError> {
        let items = entries.array().ok_or_else(|| {
            DecodeError::new("field `entries` must be an array of [key, value] pairs")
        })?;
        let mut len = 0;
        for (i, item) in items.enumerate() {
            if pair(item).is_none() {
                return Err(DecodeError::new(format!(
                    "entries[{i}] must be a [key, value] pair with a string key"
                )));
            }
            len += 1;
        }
        Ok(EntryList(EntrySource::Wire { raw: entries, len }))
    }

    /// Number of pairs.
    #[inline]
    pub fn len(&self) -> usize {
        match self.0 {
            EntrySource::Wire { len, .. } => len,
            EntrySource::Pairs(p) => p.len(),
        }
    }

    /// True when there are no pairs.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pairs, in order.
    #[inline]
    pub fn iter(&self) -> EntryIter<'a> {
        match self.0 {
            EntrySource::Wire { raw, len } => EntryIter {
                inner: EntryIterInner::Wire(raw.array().expect("invariant: validated array")),
                left: len,
            },
            EntrySource::Pairs(p) => EntryIter {
                inner: EntryIterInner::Pairs(p.iter()),
                left: p.len(),
            },
        }
    }
}

/// `[string, value]` with nothing after, or `None`.
fn pair(item: Raw<'_>) -> Option<(Cow<'_, str>, Raw<'_>)> {
    let mut it = item.array()?;
    let key = it.next().filter(|k| k.is_str())?;
    let value = it.next()?;
    if it.next().is_some() {
        return None;
    }
    Some((key.as_str()?, value))
}

impl PartialEq for EntryList<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<'a> IntoIterator for EntryList<'a> {
    type Item = (Cow<'a, str>, Raw<'a>);
    type IntoIter = EntryIter<'a>;
    fn into_iter(self) -> EntryIter<'a> {
        self.iter()
    }
}

impl<'a> IntoIterator for &EntryList<'a> {
    type Item = (Cow<'a, str>, Raw<'a>);
    type IntoIter = EntryIter<'a>;
    fn into_iter(self) -> EntryIter<'a> {
        self.iter()
    }
}

/// Iterator over an [`EntryList`].
#[derive(Debug, Clone)]
pub struct EntryIter<'a> {
    inner: EntryIterInner<'a>,
    left: usize,
}

#[derive(Debug, Clone)]
enum EntryIterInner<'a> {
    Wire(Items<'a>),
    Pairs(std::slice::Iter<'a, (&'a str, Raw<'a>)>),
}

impl<'a> Iterator for EntryIter<'a> {
    type Item = (Cow<'a, str>, Raw<'a>);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let p = match &mut self.inner {
            EntryIterInner::Wire(items) => pair(items.next()?)?,
            EntryIterInner::Pairs(p) => {
                let (k, v) = p.next()?;
                (Cow::Borrowed(*k), *v)
            }
        };
        self.left -= 1;
        Some(p)
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for EntryIter<'_> {}
