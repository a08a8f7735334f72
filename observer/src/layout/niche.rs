//! Where rustc puts the tag values of niche-encoded enums, as a model that re-derives them under
//! each rule rustc has used.
//!
//! An `Option<Enum>` whose tag lives in a field of the enum's largest variant (a `String`'s
//! capacity, a `bool`) takes its values from what that field can never hold: the field's valid
//! range is extended, one enum at a time from the innermost out, by as many values as each enum
//! needs. Which end of the range each enum extends is rustc's choice, and it changed in rustc
//! 1.97 (rust-lang/rust#155473): an enum that needs a single value (every `Option`) now takes the
//! free value closest to zero, so a `None` that was `0x8000000000000000` is `-1`, and every
//! enum around it moves. Field offsets did not change. So one DWARF build's chain of
//! reservations (read by [`chain`]) is enough to know the tags under the other rule too, and a
//! table row gives a candidate for binaries built by a rustc of either rule. The live records
//! still decide (`crate::verify`); the model only proposes.

use serde::{Deserialize, Serialize};

use super::dwarf::{DwarfError, DwarfTypes, TypeInfo};

/// A rule rustc places niche values by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NicheRule {
    /// Up to rustc 1.96: each enum extends the valid range at the bound that reaches zero
    /// soonest without passing it (for a range starting at 0, always past its end).
    Extend,
    /// From rustc 1.97: an enum needing one value takes the free value closest to zero (0 if
    /// it is free, else usually -1, then -2, ...); enums needing more extend as before.
    NearestZero,
}

impl NicheRule {
    pub const ALL: [NicheRule; 2] = [NicheRule::Extend, NicheRule::NearestZero];
}

impl std::fmt::Display for NicheRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Extend => "rustc ≤ 1.96's niche rule",
            Self::NearestZero => "rustc ≥ 1.97's niche rule (a lone niche value nearest zero)",
        })
    }
}

/// The values a scalar may hold, `start..=end`, wrapping past `u64::MAX` when `start > end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidRange {
    pub start: u64,
    pub end: u64,
}

impl ValidRange {
    pub fn contains(self, value: u64) -> bool {
        if self.start <= self.end {
            self.start <= value && value <= self.end
        } else {
            value >= self.start || value <= self.end
        }
    }
}

/// Values one enum took from the niche: `count` of them from `start` (wrapping).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserved {
    pub start: u64,
    pub count: u64,
}

impl Reserved {
    fn contains(self, value: u64) -> bool {
        value.wrapping_sub(self.start) < self.count
    }
}

/// How one tag field's values came to be: the valid range of the scalar it is, and the values
/// each enum around it reserved, innermost first (as the DWARF build shows them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicheChain {
    pub base: ValidRange,
    pub levels: Vec<Reserved>,
}

impl NicheChain {
    /// Where each level's values start under `rule`; `None` when the niche runs out.
    pub fn starts(&self, rule: NicheRule) -> Option<Vec<u64>> {
        let mut range = self.base;
        self.levels
            .iter()
            .map(|level| {
                let (start, extended) = reserve(range, level.count, rule)?;
                range = extended;
                Some(start)
            })
            .collect()
    }

    /// Whether `rule` gives exactly the values the DWARF shows.
    pub fn follows(&self, rule: NicheRule) -> bool {
        self.starts(rule)
            .is_some_and(|starts| starts.iter().eq(self.levels.iter().map(|l| &l.start)))
    }

    /// The same chain with each level's values where `rule` puts them.
    pub fn under(&self, rule: NicheRule) -> Option<NicheChain> {
        let starts = self.starts(rule)?;
        Some(NicheChain {
            base: self.base,
            levels: self
                .levels
                .iter()
                .zip(starts)
                .map(|(level, start)| Reserved {
                    start,
                    count: level.count,
                })
                .collect(),
        })
    }

    /// The value `value` (one the DWARF build stores) becomes under `rule`: the same place in
    /// the same enum's reservation. `None` for a value no level reserved.
    pub fn moved(&self, value: u64, rule: NicheRule) -> Option<u64> {
        let level = self.levels.iter().position(|l| l.contains(value))?;
        let starts = self.starts(rule)?;
        Some(starts[level].wrapping_add(value.wrapping_sub(self.levels[level].start)))
    }
}

/// Reserves `count` values next to `v` under `rule`: the first of them and the extended range
/// (rustc_abi's `Niche::reserve`).
fn reserve(v: ValidRange, count: u64, rule: NicheRule) -> Option<(u64, ValidRange)> {
    let available = v.start.wrapping_sub(v.end.wrapping_add(1));
    if count == 0 || count > available {
        return None;
    }
    let move_start = || {
        let start = v.start.wrapping_sub(count);
        Some((start, ValidRange { start, end: v.end }))
    };
    let move_end = || {
        let end = v.end.wrapping_add(count);
        Some((
            v.end.wrapping_add(1),
            ValidRange {
                start: v.start,
                end,
            },
        ))
    };
    if rule == NicheRule::NearestZero && count == 1 {
        if !v.contains(0) {
            // Zero is free: take it, extending the range from the nearer bound.
            let range = if v.start <= u64::MAX - v.end {
                ValidRange {
                    start: 0,
                    end: v.end,
                }
            } else {
                ValidRange {
                    start: v.start,
                    end: 0,
                }
            };
            return Some((0, range));
        }
        let (below, above) = (v.start.wrapping_sub(1), v.end.wrapping_add(1));
        return if (below as i64).unsigned_abs() < (above as i64).unsigned_abs() {
            move_start()
        } else {
            move_end()
        };
    }
    let distance_end_zero = u64::MAX - v.end;
    if v.start > v.end {
        // Zero is inside the range already (it wraps).
        move_end()
    } else if v.start <= distance_end_zero {
        if count <= v.start {
            move_start()
        } else {
            move_end()
        }
    } else {
        let end = v.end.wrapping_add(count);
        if (1..=v.end).contains(&end) {
            // Would wrap past zero: take the other bound.
            move_start()
        } else {
            move_end()
        }
    }
}

/// What stops a chain from being read.
#[derive(Debug, thiserror::Error)]
pub enum NicheError {
    #[error(transparent)]
    Dwarf(#[from] DwarfError),
    #[error("{0}")]
    Unsupported(String),
}

/// The chain of reservations behind the 8-byte tag at `at` in `ty`: every niche-encoded enum
/// from `ty` inwards whose tag is that field, down to the scalar it is. `None` when `ty`'s tag
/// is a plain tag (no niche: the values do not depend on the rule).
pub fn chain(
    types: &DwarfTypes<'_>,
    ty: &TypeInfo,
    at: u64,
) -> Result<Option<NicheChain>, NicheError> {
    let mut levels = Vec::new();
    let mut info = ty.clone();
    let mut at = at;
    let base = loop {
        let what = || format!("{} at {at:#x}", info.name);
        if let Some(part) = info.variant_part.as_ref().filter(|p| p.discr_offset == at) {
            if part.discr_size != 8 {
                return Err(NicheError::Unsupported(format!(
                    "{}: a {}-byte tag",
                    what(),
                    part.discr_size
                )));
            }
            let values: Vec<u64> = part.variants.iter().filter_map(|v| v.discr).collect();
            let dataful: Vec<_> = part.variants.iter().filter(|v| v.discr.is_none()).collect();
            let run = run_of(&values).ok_or_else(|| {
                NicheError::Unsupported(format!("{}: an enum without tag values", what()))
            })?;
            match dataful.as_slice() {
                // A plain tag: its values are the scalar's whole valid range.
                [] => {
                    break ValidRange {
                        start: run.start,
                        end: run.start.wrapping_add(run.count - 1),
                    };
                }
                [variant] => {
                    levels.push(run);
                    let payload = variant.payload.ok_or_else(|| {
                        NicheError::Unsupported(format!(
                            "{}: dataful variant without a type",
                            what()
                        ))
                    })?;
                    at = at.checked_sub(variant.payload_offset).ok_or_else(|| {
                        NicheError::Unsupported(format!("{}: tag before the payload", what()))
                    })?;
                    info = types.info(payload)?;
                }
                _ => {
                    return Err(NicheError::Unsupported(format!(
                        "{}: more than one variant without a tag value",
                        what()
                    )));
                }
            }
            continue;
        }
        if let Some(range) = scalar_range(&info) {
            if at != 0 || info.size != 8 {
                return Err(NicheError::Unsupported(format!(
                    "{}: the tag is not the whole 8-byte scalar",
                    what()
                )));
            }
            break range;
        }
        // A struct: go into the member that holds the 8 bytes.
        let mut inner = None;
        for member in &info.members {
            let Some(member_ty) = member.ty else { continue };
            let member_info = types.info(member_ty)?;
            if member.offset <= at && at + 8 <= member.offset + member_info.size {
                inner = Some((at - member.offset, member_info));
                break;
            }
        }
        let Some((inner_at, inner_info)) = inner else {
            return Err(NicheError::Unsupported(format!(
                "{}: no member holds the tag, and it is no scalar with a known valid range",
                what()
            )));
        };
        at = inner_at;
        info = inner_info;
    };
    if levels.is_empty() {
        return Ok(None);
    }
    levels.reverse();
    Ok(Some(NicheChain { base, levels }))
}

/// The valid range of an 8-byte scalar that restricts its values (rustc's
/// `rustc_layout_scalar_valid_range_*` on std's types, and references); `None` for anything
/// else (a struct to look into, or a plain integer, which has no niche).
fn scalar_range(info: &TypeInfo) -> Option<ValidRange> {
    let name = info.name.as_str();
    let generic = name.split('<').next().unwrap_or(name);
    let range = |start, end| Some(ValidRange { start, end });
    if info.is_pointer && name.starts_with('&') {
        return range(1, u64::MAX);
    }
    match generic {
        "UsizeNoHighBit" => range(0, i64::MAX as u64),
        "NonZeroU64Inner" | "NonZeroUsizeInner" | "NonZeroI64Inner" | "NonZeroIsizeInner" => {
            range(1, u64::MAX)
        }
        "U64NotAllOnes" | "I64NotAllOnes" => range(0, u64::MAX - 1),
        "NonNull" => range(1, u64::MAX),
        _ => None,
    }
}

/// The values one enum reserved, from the tag values its variants store: the shortest run
/// (cyclic, through `u64::MAX` to 0) that holds them all. Inside it, the dataful variant's own
/// index and absent variants are never stored.
fn run_of(values: &[u64]) -> Option<Reserved> {
    let mut values = values.to_vec();
    values.sort_unstable();
    values.dedup();
    let n = values.len();
    let (&first, &last) = (values.first()?, values.last()?);
    // The run starts after the widest gap between neighbours (the wrap-around gap included).
    let mut best = (first.wrapping_sub(last), 0);
    for i in 1..n {
        let gap = values[i] - values[i - 1];
        if gap > best.0 {
            best = (gap, i);
        }
    }
    let start = values[best.1];
    let end = values[(best.1 + n - 1) % n];
    Some(Reserved {
        start,
        count: end.wrapping_sub(start).wrapping_add(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: ValidRange = ValidRange {
        start: 0,
        end: i64::MAX as u64,
    };
    const BOOL_LIKE: ValidRange = ValidRange { start: 0, end: 1 };
    const MINUS: fn(u64) -> u64 = |k| 0u64.wrapping_sub(k);

    fn chain_of(base: ValidRange, counts: &[u64], rule: NicheRule) -> NicheChain {
        let skeleton = NicheChain {
            base,
            levels: counts
                .iter()
                .map(|&count| Reserved { start: 0, count })
                .collect(),
        };
        let starts = skeleton.starts(rule).expect("room");
        NicheChain {
            base,
            levels: counts
                .iter()
                .zip(starts)
                .map(|(&count, start)| Reserved { start, count })
                .collect(),
        }
    }

    #[test]
    fn extend_goes_past_the_end_of_a_range_from_zero() {
        // Option<Option<String>>-like: the capacity's niche, one value per level.
        let c = chain_of(CAP, &[1, 1, 1], NicheRule::Extend);
        let starts: Vec<u64> = c.levels.iter().map(|l| l.start).collect();
        assert_eq!(starts, [1 << 63, (1 << 63) + 1, (1 << 63) + 2]);
        // An enum of 15 values then an Option, in a field of two valid values.
        let c = chain_of(BOOL_LIKE, &[15, 1], NicheRule::Extend);
        assert_eq!(c.levels[0].start, 2);
        assert_eq!(c.levels[1].start, 17);
    }

    #[test]
    fn nearest_zero_takes_minus_one_then_counts_down() {
        let c = chain_of(CAP, &[1, 1, 1], NicheRule::NearestZero);
        let starts: Vec<u64> = c.levels.iter().map(|l| l.start).collect();
        assert_eq!(starts, [MINUS(1), MINUS(2), MINUS(3)]);
        // An enum needing 10 values extends as before; its Option takes -1.
        let c = chain_of(CAP, &[10, 1], NicheRule::NearestZero);
        assert_eq!(c.levels[0].start, 1 << 63);
        assert_eq!(c.levels[1].start, MINUS(1));
        // After -1 is taken, a many-valued enum goes past the end (the range wraps now).
        let c = chain_of(BOOL_LIKE, &[1, 15, 1], NicheRule::NearestZero);
        let starts: Vec<u64> = c.levels.iter().map(|l| l.start).collect();
        assert_eq!(starts, [MINUS(1), 2, MINUS(2)]);
    }

    #[test]
    fn zero_is_taken_when_free_under_both_rules() {
        let non_null = ValidRange {
            start: 1,
            end: u64::MAX,
        };
        for rule in NicheRule::ALL {
            assert_eq!(
                chain_of(non_null, &[1], rule).levels[0].start,
                0,
                "{rule:?}"
            );
        }
        assert_eq!(reserve(non_null, 2, NicheRule::Extend), None);
        let middle = ValidRange { start: 5, end: 10 };
        assert_eq!(
            reserve(middle, 1, NicheRule::NearestZero),
            Some((0, ValidRange { start: 0, end: 10 }))
        );
    }

    #[test]
    fn values_move_within_their_own_level() {
        let old = chain_of(BOOL_LIKE, &[15, 1], NicheRule::Extend);
        assert!(old.follows(NicheRule::Extend));
        assert!(!old.follows(NicheRule::NearestZero));
        // The 5th value of the 15 and the Option's None.
        assert_eq!(old.moved(6, NicheRule::NearestZero), Some(6));
        assert_eq!(old.moved(17, NicheRule::NearestZero), Some(MINUS(1)));
        assert_eq!(old.moved(1, NicheRule::NearestZero), None);
        let new = chain_of(CAP, &[1, 1, 1], NicheRule::NearestZero);
        assert_eq!(new.moved(MINUS(2), NicheRule::Extend), Some((1 << 63) + 1));
    }

    #[test]
    fn runs_wrap_through_zero_and_keep_holes() {
        assert_eq!(run_of(&[2, 3, 5, 6]), Some(Reserved { start: 2, count: 5 }));
        assert_eq!(
            run_of(&[MINUS(1), 0, 1]),
            Some(Reserved {
                start: MINUS(1),
                count: 3
            })
        );
        assert_eq!(run_of(&[7]), Some(Reserved { start: 7, count: 1 }));
        assert_eq!(run_of(&[]), None);
    }
}
