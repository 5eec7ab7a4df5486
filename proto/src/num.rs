//! Numbers read from the wire and their arithmetic.
//!
//! Owns [`Num`] and the JavaScript-compatible rules of `incr`/`decr`: integers
//! stay integers while they fit, otherwise results are floats. Depends on nothing
//! in this crate (writing a number is `Writer::num`).

/// A number read from the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    /// An integer that fits `i64`.
    Int(i64),
    /// An integer above `i64::MAX`.
    UInt(u64),
    /// Anything else.
    Float(f64),
}

impl Num {
    /// The number as a float.
    pub fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::UInt(u) => u as f64,
            Num::Float(f) => f,
        }
    }

    /// False for NaN and ±infinity (JSON has no such numbers: `1e400` parses as
    /// infinity, MessagePack can carry NaN).
    pub fn is_finite(self) -> bool {
        match self {
            Num::Float(f) => f.is_finite(),
            _ => true,
        }
    }
}

/// Addition with JavaScript's number semantics for what it can represent:
/// integers stay integers while they fit `i64`/`u64`, otherwise the result is a
/// float, and an integral float result becomes an integer again (2.5 + 0.5 = 3).
impl std::ops::Add for Num {
    type Output = Num;

    fn add(self, b: Num) -> Num {
        fn int(n: Num) -> Option<i128> {
            match n {
                Num::Int(i) => Some(i as i128),
                Num::UInt(u) => Some(u as i128),
                Num::Float(_) => None,
            }
        }
        match (int(self), int(b)) {
            (Some(x), Some(y)) => {
                let s = x + y;
                if let Ok(i) = i64::try_from(s) {
                    Num::Int(i)
                } else if let Ok(u) = u64::try_from(s) {
                    Num::UInt(u)
                } else {
                    Num::Float(s as f64)
                }
            }
            _ => {
                let f = self.as_f64() + b.as_f64();
                if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
                    Num::Int(f as i64)
                } else {
                    Num::Float(f)
                }
            }
        }
    }
}

/// Negation (for `decr`): `-i64::MIN` and any `UInt` become floats.
impl std::ops::Neg for Num {
    type Output = Num;

    fn neg(self) -> Num {
        match self {
            Num::Int(i) => i.checked_neg().map_or(Num::Float(-(i as f64)), Num::Int),
            Num::UInt(u) => Num::Float(-(u as f64)),
            Num::Float(f) => Num::Float(-f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_keeps_integers_while_they_fit() {
        assert_eq!(Num::Int(2) + Num::Int(3), Num::Int(5));
        assert_eq!(
            Num::Int(i64::MAX) + Num::Int(1),
            Num::UInt(i64::MAX as u64 + 1)
        );
        assert_eq!(
            Num::UInt(u64::MAX) + Num::Int(1),
            Num::Float(u64::MAX as f64 + 1.0)
        );
        assert_eq!(Num::Float(2.5) + Num::Float(0.5), Num::Int(3));
        assert_eq!(Num::Int(1) + Num::Float(0.25), Num::Float(1.25));
        assert_eq!(-Num::Int(3), Num::Int(-3));
        assert_eq!(-Num::Int(i64::MIN), Num::Float(-(i64::MIN as f64)));
        assert_eq!(-Num::UInt(u64::MAX), Num::Float(-(u64::MAX as f64)));
        assert_eq!(-Num::Float(0.5), Num::Float(-0.5));
        assert_eq!(Num::UInt(7).as_f64(), 7.0);
    }
}
