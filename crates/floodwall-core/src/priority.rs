//! A request's priority for admission control (DAGOR): the `Priority`
//! extension, its wire form and its criticality classes.

use std::fmt;

/// A request's priority for admission control (DAGOR style).
///
/// Two parts, compared lexicographically: `business` (from a table keyed by
/// route or method; **lower is more important**) and `user` (a hash of the
/// user id in `0..=127`; lower is more important). The derived order is that
/// compound order, so `a < b` means "`a` is more important than `b`".
///
/// ```
/// use floodwall_core::Priority;
///
/// let checkout = Priority::new(1, 90)?;
/// let browse = Priority::new(5, 3)?;
/// assert!(checkout < browse, "business priority decides first");
/// assert!(Priority::new(8, 200).is_err(), "user priority is 0..=127");
/// # Ok::<(), floodwall_core::InvalidPriority>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority {
    business: u8,
    user: u8,
}

impl Priority {
    /// The largest user priority value.
    pub const MAX_USER: u8 = 127;

    /// The most important priority: `(0, 0)`.
    pub const HIGHEST: Priority = Priority {
        business: 0,
        user: 0,
    };

    /// The least important priority: `(255, 127)`.
    pub const LOWEST: Priority = Priority {
        business: u8::MAX,
        user: Self::MAX_USER,
    };

    /// A priority; fails if `user` is above [`MAX_USER`](Self::MAX_USER).
    pub const fn new(business: u8, user: u8) -> Result<Self, InvalidPriority> {
        if user > Self::MAX_USER {
            return Err(InvalidPriority { user });
        }
        Ok(Self { business, user })
    }

    /// The business priority (lower is more important).
    pub const fn business(self) -> u8 {
        self.business
    }

    /// The user priority, `0..=127` (lower is more important).
    pub const fn user(self) -> u8 {
        self.user
    }
}

/// `business-user`, the wire form of [`PRIORITY_HEADER`](crate::wire::PRIORITY_HEADER)
/// and [`ADMISSION_LEVEL_HEADER`](crate::wire::ADMISSION_LEVEL_HEADER).
impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.business, self.user)
    }
}

/// Parses the `business-user` wire form: two decimal numbers of at most three
/// digits each, `business` in `0..=255`, `user` in `0..=127`, joined by `-`,
/// nothing else (no spaces, signs or leading `+`).
///
/// ```
/// use floodwall_core::Priority;
///
/// let p: Priority = "3-87".parse()?;
/// assert_eq!((p.business(), p.user()), (3, 87));
/// assert_eq!(p.to_string(), "3-87");
/// assert!("3-128".parse::<Priority>().is_err());
/// assert!(" 3-1".parse::<Priority>().is_err());
/// # Ok::<(), floodwall_core::ParsePriorityError>(())
/// ```
impl std::str::FromStr for Priority {
    type Err = ParsePriorityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}

impl Priority {
    /// Parses the `business-user` wire form from raw header bytes (see the
    /// [`FromStr`](std::str::FromStr) impl).
    ///
    /// # Errors
    /// [`ParsePriorityError`] for anything but the exact form.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParsePriorityError> {
        fn number(digits: &[u8], max: u8) -> Option<u8> {
            if digits.is_empty() || digits.len() > 3 {
                return None;
            }
            let mut n: u16 = 0;
            for &d in digits {
                if !d.is_ascii_digit() {
                    return None;
                }
                n = n * 10 + u16::from(d - b'0');
            }
            u8::try_from(n).ok().filter(|&n| n <= max)
        }
        let dash = bytes
            .iter()
            .position(|&b| b == b'-')
            .ok_or(ParsePriorityError(()))?;
        let business = number(&bytes[..dash], u8::MAX).ok_or(ParsePriorityError(()))?;
        let user = number(&bytes[dash + 1..], Self::MAX_USER).ok_or(ParsePriorityError(()))?;
        Ok(Self { business, user })
    }

    /// The wire form (`business-user`) as a header value, built without
    /// formatting machinery (one allocation, for the value itself).
    ///
    /// ```
    /// use floodwall_core::Priority;
    ///
    /// assert_eq!(Priority::new(3, 87)?.header_value(), "3-87");
    /// assert_eq!(Priority::LOWEST.header_value(), "255-127");
    /// # Ok::<(), floodwall_core::InvalidPriority>(())
    /// ```
    pub fn header_value(self) -> http::HeaderValue {
        // A request usually carries one of a few priorities: the values
        // made last on this thread are kept (a clone is a reference count;
        // making one is an allocation and a validation).
        const SLOTS: usize = 64;
        thread_local! {
            static MADE: std::cell::RefCell<[Option<(u16, http::HeaderValue)>; SLOTS]> =
                const { std::cell::RefCell::new([const { None }; SLOTS]) };
        }
        let index = self.index();
        let slot = usize::from(index) % SLOTS;
        MADE.with(|made| {
            let mut made = made.borrow_mut();
            match &made[slot] {
                Some((i, value)) if *i == index => value.clone(),
                _ => {
                    let value = self.make_header_value();
                    made[slot] = Some((index, value.clone()));
                    value
                }
            }
        })
    }

    fn make_header_value(self) -> http::HeaderValue {
        fn push(buf: &mut [u8; 7], len: &mut usize, n: u8) {
            let digits = [n / 100, n / 10 % 10, n % 10];
            let skip = if n >= 100 {
                0
            } else if n >= 10 {
                1
            } else {
                2
            };
            for &d in &digits[skip..] {
                buf[*len] = b'0' + d;
                *len += 1;
            }
        }
        let mut buf = [0u8; 7];
        let mut len = 0;
        push(&mut buf, &mut len, self.business);
        buf[len] = b'-';
        len += 1;
        push(&mut buf, &mut len, self.user);
        http::HeaderValue::from_bytes(&buf[..len])
            .expect("digits and a dash are a valid header value")
    }

    /// The priority's position in the compound order, `business * 128 +
    /// user`: 0 for [`HIGHEST`](Self::HIGHEST), 32767 for
    /// [`LOWEST`](Self::LOWEST).
    pub const fn index(self) -> u16 {
        (self.business as u16) * 128 + self.user as u16
    }

    /// The priority at `index` in the compound order (indices above 32767
    /// saturate to [`LOWEST`](Self::LOWEST)).
    pub const fn from_index(index: u16) -> Self {
        if index > Self::LOWEST.index() {
            return Self::LOWEST;
        }
        Self {
            business: (index / 128) as u8,
            user: (index % 128) as u8,
        }
    }
}

/// Returned when a priority's wire form (`business-user`) does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsePriorityError(());

impl fmt::Display for ParsePriorityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid priority: expected `business-user`, business 0..=255, user 0..=127")
    }
}

impl std::error::Error for ParsePriorityError {}

/// The four request criticality classes of Google's SRE practice, most
/// important first: adaptive throttling keeps separate statistics per class,
/// and criticality-based shedding drops every lower class before a higher
/// one.
///
/// The derived order is by importance: `CriticalPlus < Critical <
/// SheddablePlus < Sheddable` ("less" is more important), like [`Priority`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Criticality {
    /// The most critical: user-visible and must not fail.
    CriticalPlus,
    /// The default for user-visible requests.
    #[default]
    Critical,
    /// Batch or background work that tolerates some unavailability.
    SheddablePlus,
    /// Work that may be dropped freely under load.
    Sheddable,
}

impl Criticality {
    /// All classes, most important first.
    pub const ALL: [Criticality; 4] = [
        Criticality::CriticalPlus,
        Criticality::Critical,
        Criticality::SheddablePlus,
        Criticality::Sheddable,
    ];

    /// The class's position in [`ALL`](Self::ALL) (0 = most important).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// A short, stable, lower-case name, used as a metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Criticality::CriticalPlus => "critical_plus",
            Criticality::Critical => "critical",
            Criticality::SheddablePlus => "sheddable_plus",
            Criticality::Sheddable => "sheddable",
        }
    }
}

/// Returned by [`Priority::new`] for a user priority above 127.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidPriority {
    user: u8,
}

impl fmt::Display for InvalidPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "user priority {} is out of range 0..={}",
            self.user,
            Priority::MAX_USER
        )
    }
}

impl std::error::Error for InvalidPriority {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_right_whatever_the_cache_holds() {
        // Every priority twice, in an order that makes every cache slot
        // change hands: a value handed out is always the priority's own.
        for round in 0..2 {
            for index in (0..32_768u16).rev().step_by(7).chain(0..200) {
                let p = Priority::from_index(index);
                let value = p.header_value();
                assert_eq!(
                    value.to_str().unwrap(),
                    format!("{}-{}", p.business(), p.user()),
                    "round {round}"
                );
                assert_eq!(value.to_str().unwrap().parse::<Priority>().unwrap(), p);
            }
        }
    }

    #[test]
    fn priority_order_is_lexicographic() {
        let p = |b, u| Priority::new(b, u).unwrap();
        assert!(p(0, 127) < p(1, 0));
        assert!(p(3, 4) < p(3, 5));
        assert_eq!(Priority::HIGHEST, p(0, 0));
        assert!(Priority::LOWEST > p(254, 127));
        for (text, b, u) in [("0-0", 0, 0), ("255-127", 255, 127), ("007-12", 7, 12)] {
            let parsed: Priority = text.parse().unwrap();
            assert_eq!((parsed.business(), parsed.user()), (b, u));
            assert_eq!(Priority::from_index(parsed.index()), parsed);
        }
        for bad in [
            "", "-", "1-", "-1", "256-0", "1-128", "1-2-3", "+1-2", "1 -2", "1-2 ", "1234-1", "a-1",
        ] {
            assert!(bad.parse::<Priority>().is_err(), "{bad:?} must not parse");
        }
        assert_eq!(Priority::LOWEST.index(), 32767);
        assert_eq!(Priority::from_index(u16::MAX), Priority::LOWEST);
        assert_eq!(Priority::LOWEST.to_string(), "255-127");
        for index in [0u16, 9, 10, 99, 100, 127, 128, 1290, 12_800, 32_767] {
            let p = Priority::from_index(index);
            assert_eq!(p.header_value(), p.to_string().as_str());
        }
        let err = Priority::new(0, 128).unwrap_err();
        assert_eq!(err.to_string(), "user priority 128 is out of range 0..=127");
    }
}
