//! When a schedule fires: a cron expression in a time zone, or a fixed interval, evaluated as
//! pure functions of a time (ms since the epoch), and the plan for one wake-up of a scheduler
//! (which fire times to enqueue, which to skip as missed). No I/O, no clock: the scheduler
//! passes the time in, the tests pass any time they like.

use std::str::FromStr;

use chrono::{DateTime, TimeZone};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

use super::Missed;

/// A schedule's fire times.
#[derive(Debug, Clone)]
pub enum Cadence {
    /// Every `n` ms, at the multiples of `n` since the Unix epoch (so every 60 s fires on the
    /// minute, whichever scheduler computes it).
    Every(u64),
    /// A cron expression in a time zone.
    Cron(Box<Cron>, Tz),
}

/// Parses a cron expression: 5 fields (minute first) or 6 (second first), the syntax of
/// Vixie cron plus `L`, `W` and `#` (croner's). The error is croner's own message.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let parser = CronParser::builder().seconds(Seconds::Optional).build();
    let e = match parser.parse(expr) {
        Ok(cron) => return Ok(cron),
        Err(e) => e,
    };
    // croner's message does not say which field is wrong: find the first that fails alone.
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let names: &[&str] = match fields.len() {
        5 => &["minute", "hour", "day-of-month", "month", "day-of-week"],
        6 => &["second", "minute", "hour", "day-of-month", "month", "day-of-week"],
        7 => &[
            "second",
            "minute",
            "hour",
            "day-of-month",
            "month",
            "day-of-week",
            "year",
        ],
        n => {
            return Err(format!(
                "{n} field(s): expected 5 (minute hour day-of-month month day-of-week) or 6 (second first)"
            ));
        }
    };
    for (i, field) in fields.iter().enumerate() {
        let probe: Vec<&str> = (0..fields.len()).map(|j| if j == i { *field } else { "*" }).collect();
        if let Err(alone) = parser.parse(&probe.join(" ")) {
            return Err(format!("{} field {field:?}: {alone}", names[i]));
        }
    }
    Err(e.to_string())
}

/// Parses an IANA time zone name (`Europe/Berlin`, `UTC`); the error says what is accepted.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    Tz::from_str(name)
        .map_err(|_| "not an IANA time zone name (such as UTC, Europe/Berlin, America/New_York)".to_owned())
}

impl Cadence {
    /// The first fire time strictly after `ms`, or `None` when there is none (a cron
    /// expression that never matches again, like 30 February).
    pub fn next_after(&self, ms: u64) -> Option<u64> {
        match self {
            Cadence::Every(n) => Some((ms / n + 1) * n),
            Cadence::Cron(cron, tz) => {
                let at = at(tz, ms)?;
                cron.find_next_occurrence(&at, false).ok().map(ms_of)
            }
        }
    }

    /// The last fire time at or before `ms`.
    pub fn latest_at_or_before(&self, ms: u64) -> Option<u64> {
        match self {
            Cadence::Every(n) => Some(ms / n * n),
            Cadence::Cron(cron, tz) => {
                // croner's resolution is a second: a fire time is a whole second, so the
                // last one at or before `ms` is the last one at or before its second.
                let at = at(tz, ms / 1000 * 1000)?;
                cron.find_previous_occurrence(&at, true).ok().map(ms_of)
            }
        }
    }

    /// The next `n` fire times strictly after `ms`.
    pub fn upcoming(&self, ms: u64, n: usize) -> Vec<u64> {
        let mut out = Vec::with_capacity(n);
        let mut from = ms;
        while out.len() < n {
            match self.next_after(from) {
                Some(t) => {
                    out.push(t);
                    from = t;
                }
                None => break,
            }
        }
        out
    }
}

fn at(tz: &Tz, ms: u64) -> Option<DateTime<Tz>> {
    let utc = DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)?;
    Some(tz.from_utc_datetime(&utc.naive_utc()))
}

/// `ms` as RFC 3339 in zone `tz`, to the second (`2026-12-01T02:30:00+01:00`).
pub fn render(tz: &Tz, ms: u64) -> String {
    at(tz, ms).map_or_else(|| ms.to_string(), |t| t.format("%Y-%m-%dT%H:%M:%S%:z").to_string())
}

fn ms_of(t: DateTime<Tz>) -> u64 {
    u64::try_from(t.timestamp_millis()).unwrap_or(0)
}

/// Most missed fire times counted for a log line (a long outage of a fast schedule is not
/// walked to the end just to count it).
const COUNT_CAP: u64 = 10_000;

/// Most fire times one wake-up enqueues for one schedule (a long misfire grace on a fast
/// schedule could make many due at once): the rest are left for the next wake-up, at once.
pub const MAX_FIRES_PER_WAKE: usize = 100;

/// What one wake-up of a scheduler does for one schedule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Fire times to enqueue, oldest first (each then marked fired).
    pub fire: Vec<u64>,
    /// Missed fire times skipped (not enqueued), at most `COUNT_CAP` counted.
    pub skipped: u64,
    /// The last skipped fire time, to mark fired when nothing is enqueued after it.
    pub skip_to: Option<u64>,
    /// The next fire time after this plan (when to wake up for this schedule; at or before
    /// now when the plan stopped at [`MAX_FIRES_PER_WAKE`]).
    pub next: Option<u64>,
}

/// The plan for a schedule last fired at `last` when the time is `now`: fire times in
/// `(last, now]` are due; those older than `now - grace` are missed and, per `missed`,
/// skipped or run as one task (the latest of them), the others are enqueued.
pub fn plan(cadence: &Cadence, last: u64, now: u64, grace_ms: u64, missed: Missed) -> Plan {
    let mut out = Plan::default();
    let Some(first) = cadence.next_after(last) else {
        return out;
    };
    if first > now {
        out.next = Some(first);
        return out;
    }
    let on_time_from = now.saturating_sub(grace_ms);
    let mut from = last;
    if first < on_time_from {
        // Missed: everything in (last, on_time_from).
        let latest = cadence
            .latest_at_or_before(on_time_from - 1)
            .filter(|&t| t > last)
            .unwrap_or(first);
        let mut count = 0;
        let mut t = Some(first);
        while let Some(at) = t.filter(|&at| at <= latest) {
            count += 1;
            if count >= COUNT_CAP {
                break;
            }
            t = cadence.next_after(at);
        }
        match missed {
            Missed::Skip => {
                out.skipped = count;
                out.skip_to = Some(latest);
            }
            Missed::RunOnce => {
                out.skipped = count - 1;
                out.fire.push(latest);
            }
        }
        from = latest;
    }
    let mut t = cadence.next_after(from);
    while let Some(at) = t {
        if at > now || out.fire.len() >= MAX_FIRES_PER_WAKE {
            break;
        }
        out.fire.push(at);
        t = cadence.next_after(at);
    }
    out.next = t;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn cron(expr: &str, tz: &str) -> Cadence {
        Cadence::Cron(Box::new(parse_cron(expr).unwrap()), parse_timezone(tz).unwrap())
    }

    /// ms of a wall-clock time in a zone (the earlier one of an ambiguous time).
    fn local(tz: &str, y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> u64 {
        let tz = parse_timezone(tz).unwrap();
        let naive = NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, s)
            .unwrap();
        ms_of(tz.from_local_datetime(&naive).earliest().unwrap())
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> u64 {
        local("UTC", y, mo, d, h, mi, s)
    }

    /// Fire times rendered in their zone with the offset, to read DST cases at a glance.
    fn shown(tz: &str, times: &[u64]) -> Vec<String> {
        let tz = parse_timezone(tz).unwrap();
        times
            .iter()
            .map(|&t| at(&tz, t).unwrap().format("%m-%d %H:%M:%S%:z").to_string())
            .collect()
    }

    #[test]
    fn a_six_field_expression_has_seconds_and_a_five_field_one_fires_on_the_minute() {
        let every_ten_s = cron("*/10 * * * * *", "UTC");
        let t = utc(2026, 12, 1, 10, 0, 3);
        assert_eq!(every_ten_s.upcoming(t, 3), [t + 7_000, t + 17_000, t + 27_000]);
        let minutely = cron("* * * * *", "UTC");
        assert_eq!(minutely.next_after(t), Some(utc(2026, 12, 1, 10, 1, 0)));
        // Strictly after: a fire time itself is not "next after" itself.
        assert_eq!(
            minutely.next_after(utc(2026, 12, 1, 10, 1, 0)),
            Some(utc(2026, 12, 1, 10, 2, 0))
        );
        // A time within a second counts as that second.
        assert_eq!(
            minutely.next_after(utc(2026, 12, 1, 10, 0, 59) + 999),
            Some(utc(2026, 12, 1, 10, 1, 0))
        );
    }

    #[test]
    fn an_interval_fires_on_its_multiples_since_the_epoch() {
        let every = Cadence::Every(60_000);
        assert_eq!(
            every.next_after(utc(2026, 12, 1, 10, 0, 3)),
            Some(utc(2026, 12, 1, 10, 1, 0))
        );
        assert_eq!(
            every.next_after(utc(2026, 12, 1, 10, 1, 0)),
            Some(utc(2026, 12, 1, 10, 2, 0))
        );
        assert_eq!(
            every.latest_at_or_before(utc(2026, 12, 1, 10, 1, 0)),
            Some(utc(2026, 12, 1, 10, 1, 0))
        );
    }

    #[test]
    fn a_daily_job_in_the_spring_forward_gap_runs_right_after_the_gap_once() {
        // Europe/Berlin, 29 March 2026: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
        let job = cron("30 2 * * *", "Europe/Berlin");
        let times = job.upcoming(local("Europe/Berlin", 2026, 3, 28, 12, 0, 0), 3);
        assert_eq!(
            shown("Europe/Berlin", &times),
            ["03-29 03:00:00+02:00", "03-30 02:30:00+02:00", "03-31 02:30:00+02:00"],
            "the gap day's run comes at the first valid time after the gap"
        );
    }

    #[test]
    fn a_daily_job_in_the_fall_back_overlap_runs_once() {
        // Europe/Berlin, 25 October 2026: 03:00 CEST falls back to 02:00 CET; 02:30 is twice.
        let job = cron("30 2 * * *", "Europe/Berlin");
        let times = job.upcoming(local("Europe/Berlin", 2026, 10, 24, 12, 0, 0), 3);
        assert_eq!(
            shown("Europe/Berlin", &times),
            ["10-25 02:30:00+02:00", "10-26 02:30:00+01:00", "10-27 02:30:00+01:00"]
        );
    }

    #[test]
    fn an_hourly_job_runs_in_both_passes_of_the_repeated_hour_and_skips_the_missing_one() {
        let hourly = cron("0 0 * * * *", "America/New_York");
        // 1 November 2026: 02:00 EDT falls back to 01:00 EST: 01:00 happens twice.
        let back = hourly.upcoming(local("America/New_York", 2026, 11, 1, 0, 30, 0), 3);
        assert_eq!(
            shown("America/New_York", &back),
            ["11-01 01:00:00-04:00", "11-01 01:00:00-05:00", "11-01 02:00:00-05:00"]
        );
        // Each is one real hour after the other: no double fire, no lost hour.
        assert_eq!((back[1] - back[0], back[2] - back[1]), (3_600_000, 3_600_000));
        // 8 March 2026: 02:00 EST jumps to 03:00 EDT: there is no 02:00.
        let fwd = hourly.upcoming(local("America/New_York", 2026, 3, 8, 0, 30, 0), 3);
        assert_eq!(
            shown("America/New_York", &fwd),
            ["03-08 01:00:00-05:00", "03-08 03:00:00-04:00", "03-08 04:00:00-04:00"]
        );
    }

    #[test]
    fn cron_edges_last_day_leap_day_and_nth_weekday() {
        // The last day of February, in a leap year and not.
        let last = cron("0 0 L 2 *", "UTC");
        assert_eq!(
            last.upcoming(utc(2027, 1, 1, 0, 0, 0), 2),
            [utc(2027, 2, 28, 0, 0, 0), utc(2028, 2, 29, 0, 0, 0)]
        );
        // 29 February: once every four years.
        let leap = cron("0 0 29 2 *", "UTC");
        assert_eq!(
            leap.next_after(utc(2026, 3, 1, 0, 0, 0)),
            Some(utc(2028, 2, 29, 0, 0, 0))
        );
        // The second Monday of the month.
        let second_monday = cron("0 9 * * MON#2", "UTC");
        assert_eq!(
            second_monday.next_after(utc(2026, 12, 1, 0, 0, 0)),
            Some(utc(2026, 12, 14, 9, 0, 0))
        );
        // An expression that never matches has no next fire time (and does not hang).
        let never = cron("0 0 30 2 *", "UTC");
        assert_eq!(never.next_after(utc(2026, 12, 1, 0, 0, 0)), None);
    }

    #[test]
    fn bad_expressions_and_zones_say_why() {
        for (bad, says) in [
            ("61 * * * *", "minute field \"61\""),
            ("0 0 25 * * *", "hour field \"25\""),
            ("* * 0 * *", "day-of-month field \"0\""),
            ("* * * 13 *", "month field \"13\""),
            ("* * * * FUNDAY", "day-of-week field \"FUNDAY\""),
            ("* * *", "3 field(s): expected 5"),
            ("every minute", "2 field(s)"),
            ("* * * * * * * *", "8 field(s)"),
        ] {
            let e = parse_cron(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(parse_timezone("Mars/Olympus").unwrap_err().contains("IANA"));
        assert!(parse_timezone("Europe/Berlin").is_ok());
    }

    #[test]
    fn on_time_fires_are_enqueued_in_order() {
        let every = Cadence::Every(1_000);
        let p = plan(&every, 10_000, 12_500, 5_000, Missed::Skip);
        assert_eq!(p.fire, [11_000, 12_000]);
        assert_eq!((p.skipped, p.skip_to, p.next), (0, None, Some(13_000)));
        // Nothing due: only the next time.
        let p = plan(&every, 12_000, 12_500, 5_000, Missed::Skip);
        assert_eq!((p.fire.len(), p.next), (0, Some(13_000)));
    }

    #[test]
    fn after_downtime_skip_drops_the_missed_fires_and_run_once_runs_the_latest_of_them() {
        let every = Cadence::Every(1_000);
        // Last fired at 10 s, back at 20.5 s with a grace of 1 s: 11..=19 s are missed
        // (older than 19.5 s), 20 s is on time.
        let skip = plan(&every, 10_000, 20_500, 1_000, Missed::Skip);
        assert_eq!(skip.fire, [20_000]);
        assert_eq!((skip.skipped, skip.skip_to), (9, Some(19_000)));
        let once = plan(&every, 10_000, 20_500, 1_000, Missed::RunOnce);
        assert_eq!(
            once.fire,
            [19_000, 20_000],
            "one run for the outage, then the on-time fire"
        );
        assert_eq!(once.skipped, 8);
        // Back between two fire times: skip enqueues nothing and moves the state on.
        let skip = plan(&every, 10_000, 20_000 + 100, 50, Missed::Skip);
        assert_eq!((skip.fire.len(), skip.skip_to), (0, Some(20_000)));
        // A daily cron missed for three days runs once with run-once.
        let daily = cron("0 0 * * *", "UTC");
        let once = plan(
            &daily,
            utc(2026, 12, 1, 0, 0, 0),
            utc(2026, 12, 4, 12, 0, 0),
            5_000,
            Missed::RunOnce,
        );
        assert_eq!(once.fire, [utc(2026, 12, 4, 0, 0, 0)]);
        assert_eq!(once.next, Some(utc(2026, 12, 5, 0, 0, 0)));
    }

    #[test]
    fn a_wake_up_enqueues_at_most_a_bounded_number_and_leaves_the_rest_due() {
        let every = Cadence::Every(1_000);
        // A day's grace on a 1 s schedule, back after an hour: all 3,600 are on time.
        let p = plan(&every, 0, 3_600_000, 86_400_000, Missed::Skip);
        assert_eq!(p.fire.len(), MAX_FIRES_PER_WAKE);
        assert_eq!(
            p.next,
            Some((MAX_FIRES_PER_WAKE as u64 + 1) * 1_000),
            "due now: wake again at once"
        );
    }

    #[test]
    fn a_long_outage_of_a_fast_schedule_is_planned_without_walking_it() {
        let every = Cadence::Every(1_000);
        let year = 365 * 24 * 3_600_000;
        let p = plan(&every, 0, year, 1_000, Missed::Skip);
        assert_eq!(p.skipped, COUNT_CAP);
        assert_eq!(p.fire, [year - 1_000, year]);
    }
}
