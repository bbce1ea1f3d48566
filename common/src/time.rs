//! DAP-18 times and durations. On the wire both count units of the task's `time_precision`, not
//! seconds, so the types here only convert to and from seconds through a [`TimePrecision`].

use prio::codec::{CodecError, Decode, Encode};
use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// `uint64 TimePrecision`: the length of one time unit of a task, in seconds (never zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct TimePrecision(u64);

impl TimePrecision {
    /// A precision of `seconds` seconds; `None` for zero, which the spec's arithmetic cannot use.
    pub const fn from_seconds(seconds: u64) -> Option<Self> {
        if seconds == 0 {
            None
        } else {
            Some(Self(seconds))
        }
    }

    pub const fn as_seconds(self) -> u64 {
        self.0
    }
}

impl TryFrom<u64> for TimePrecision {
    type Error = &'static str;
    fn try_from(value: u64) -> Result<Self, Self::Error> {
        Self::from_seconds(value).ok_or("time_precision must be at least one second")
    }
}

impl From<TimePrecision> for u64 {
    fn from(value: TimePrecision) -> u64 {
        value.0
    }
}

impl Encode for TimePrecision {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.0.encode(bytes)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(8)
    }
}

impl Decode for TimePrecision {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Self::from_seconds(u64::decode(bytes)?).ok_or(CodecError::UnexpectedValue)
    }
}

/// `uint64 Time`: a number of `time_precision` units since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Time(u64);

/// `uint64 Duration`: a number of `time_precision` units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Duration(u64);

impl Time {
    /// The time whose wire value is `units` (units of the task's time precision).
    pub const fn from_units(units: u64) -> Self {
        Self(units)
    }

    /// The wire value: units of the task's time precision.
    pub const fn units(self) -> u64 {
        self.0
    }

    /// The time unit containing the POSIX timestamp `seconds` (rounded down, as clients must).
    pub const fn from_seconds(seconds: u64, precision: TimePrecision) -> Self {
        Self(seconds / precision.0)
    }

    /// The POSIX timestamp of the start of this time unit; `None` past the year 584 billion.
    pub const fn to_seconds(self, precision: TimePrecision) -> Option<u64> {
        self.0.checked_mul(precision.0)
    }

    /// The current time, rounded down to the precision.
    pub fn now(precision: TimePrecision) -> Self {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Self::from_seconds(secs, precision)
    }

    pub const fn checked_add(self, duration: Duration) -> Option<Time> {
        match self.0.checked_add(duration.0) {
            Some(t) => Some(Time(t)),
            None => None,
        }
    }

    /// The duration from `earlier` to `self`, or `None` if `earlier` is later.
    pub const fn checked_since(self, earlier: Time) -> Option<Duration> {
        match self.0.checked_sub(earlier.0) {
            Some(d) => Some(Duration(d)),
            None => None,
        }
    }
}

impl Duration {
    pub const ZERO: Duration = Duration(0);
    /// One unit of the task's time precision.
    pub const ONE: Duration = Duration(1);

    pub const fn from_units(units: u64) -> Self {
        Self(units)
    }

    pub const fn units(self) -> u64 {
        self.0
    }

    /// The number of whole units in `seconds`, rounded up so that a tolerance is never shortened.
    pub const fn from_seconds_ceil(seconds: u64, precision: TimePrecision) -> Self {
        Self(seconds.div_ceil(precision.0))
    }

    pub const fn to_seconds(self, precision: TimePrecision) -> Option<u64> {
        self.0.checked_mul(precision.0)
    }
}

macro_rules! u64_codec {
    ($t:ty) => {
        impl Encode for $t {
            fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
                self.0.encode(bytes)
            }
            fn encoded_len(&self) -> Option<usize> {
                Some(8)
            }
        }
        impl Decode for $t {
            fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
                Ok(Self(u64::decode(bytes)?))
            }
        }
    };
}
u64_codec!(Time);
u64_codec!(Duration);

/// `struct { Time start; Duration duration; } Interval`, half-open: `[start, start + duration)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Interval {
    pub start: Time,
    pub duration: Duration,
}

impl Interval {
    pub const fn new(start: Time, duration: Duration) -> Self {
        Self { start, duration }
    }

    /// The excluded end, `start + duration`; `None` if it overflows (such an interval is invalid).
    pub const fn end(&self) -> Option<Time> {
        self.start.checked_add(self.duration)
    }

    /// Whether `time` falls within the interval.
    pub fn contains(&self, time: Time) -> bool {
        time >= self.start && self.end().is_none_or(|end| time < end)
    }

    /// Whether `other` lies entirely within `self`.
    pub fn contains_interval(&self, other: &Interval) -> bool {
        match (self.end(), other.end()) {
            (Some(end), Some(other_end)) => other.start >= self.start && other_end <= end,
            _ => false,
        }
    }

    /// Whether the two intervals share at least one time unit.
    pub fn overlaps(&self, other: &Interval) -> bool {
        let (Some(a_end), Some(b_end)) = (self.end(), other.end()) else {
            return false;
        };
        self.start < b_end && other.start < a_end
    }

    /// The smallest interval containing both `self` and `time`, one unit wide at least: the
    /// collection result's `interval` is built this way from report timestamps.
    pub fn merged_with(&self, time: Time) -> Interval {
        let start = self.start.min(time);
        let end = self.end().unwrap_or(Time(u64::MAX)).max(Time(time.0.saturating_add(1)));
        Interval::new(start, Duration(end.0 - start.0))
    }

    /// The one-unit interval containing `time`: a time-interval batch bucket.
    pub const fn unit_containing(time: Time) -> Interval {
        Interval::new(time, Duration::ONE)
    }
}

impl Encode for Interval {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.start.encode(bytes)?;
        self.duration.encode(bytes)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(16)
    }
}

impl Decode for Interval {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self { start: Time::decode(bytes)?, duration: Duration::decode(bytes)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_example_times() {
        // DAP-18 "Times, Durations and Intervals" examples, with a precision of 10 seconds.
        let p = TimePrecision::from_seconds(10).unwrap();
        let t = Time::from_units(123456789);
        assert_eq!(t.to_seconds(p), Some(1234567890));
        assert_eq!(Duration::from_units(11).to_seconds(p), Some(110));
        let i = Interval::new(t, Duration::from_units(11));
        assert_eq!(i.end().unwrap().to_seconds(p), Some(1234568000));
        assert_eq!(Time::from_seconds(1234567899, p), t);
    }

    #[test]
    fn interval_relations() {
        let i = Interval::new(Time::from_units(10), Duration::from_units(5));
        assert!(i.contains(Time::from_units(10)));
        assert!(i.contains(Time::from_units(14)));
        assert!(!i.contains(Time::from_units(15)));
        assert!(!i.contains(Time::from_units(9)));
        let j = Interval::new(Time::from_units(14), Duration::from_units(3));
        assert!(i.overlaps(&j));
        let k = Interval::new(Time::from_units(15), Duration::from_units(3));
        assert!(!i.overlaps(&k));
        assert!(i.contains_interval(&Interval::new(Time::from_units(11), Duration::from_units(4))));
        assert!(!i.contains_interval(&j));
        let m = Interval::unit_containing(Time::from_units(20)).merged_with(Time::from_units(17));
        assert_eq!(m, Interval::new(Time::from_units(17), Duration::from_units(4)));
        let overflow = Interval::new(Time::from_units(u64::MAX), Duration::from_units(2));
        assert_eq!(overflow.end(), None);
    }

    #[test]
    fn codec_roundtrips() {
        use crate::messages::test_util::*;
        roundtrip(&Time::from_units(490000), Some(&unhex("0000000000077a10")));
        roundtrip(&Duration::from_units(24), Some(&unhex("0000000000000018")));
        roundtrip(&TimePrecision::from_seconds(3600).unwrap(), Some(&unhex("0000000000000e10")));
        roundtrip(
            &Interval::new(Time::from_units(1), Duration::from_units(2)),
            Some(&unhex("0000000000000001 0000000000000002")),
        );
    }

    #[test]
    fn zero_precision_rejected() {
        assert!(TimePrecision::from_seconds(0).is_none());
        assert!(TimePrecision::get_decoded(&[0; 8]).is_err());
        assert_eq!(Duration::from_seconds_ceil(61, TimePrecision::from_seconds(60).unwrap()).units(), 2);
    }
}
