//! [`Tuning`]: which algorithm a [`TransportComm`](super::TransportComm)
//! runs for a collective, by rank count and message size. A table of rules,
//! tried in order; the first whose collective matches and whose limits the
//! call fits wins. Built in ([`Tuning::builtin`]), or read from a file
//! (`mfio-bench coll --tune` measures one; `MFIO_COLL_TUNING` names it).
//!
//! The file has one rule per line: collective, most ranks, most bytes
//! (each rank's message: the vector of an allreduce, a rank's block of an
//! allgather), algorithm; `*` for no limit, `#` starts a comment.
//!
//! ```text
//! allreduce  *  16384  recursive_doubling
//! allreduce  *  *      ring
//! ```

use std::fmt;
use std::str::FromStr;

use mfio_core::{Error, Result};

/// The environment variable naming a tuning file.
pub const TUNING_VAR: &str = "MFIO_COLL_TUNING";

/// The collectives whose algorithm a table chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Collective {
    /// allreduce.
    Allreduce,
    /// bcast.
    Bcast,
    /// reduce.
    Reduce,
    /// allgather.
    Allgather,
    /// reduce_scatter_block.
    ReduceScatterBlock,
    /// scatter.
    Scatter,
    /// gather.
    Gather,
    /// alltoall.
    Alltoall,
}

/// The algorithms a table may name (each applies to some collectives:
/// [`Algorithm::applies_to`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Ring (allreduce, allgather, reduce_scatter_block).
    Ring,
    /// Ring in pipelined segments (allreduce).
    SegmentedRing,
    /// Recursive doubling (allreduce; allgather at powers of two).
    RecursiveDoubling,
    /// Recursive halving then doubling (allreduce).
    Rabenseifner,
    /// Binomial reduce to rank 0, then binomial bcast (allreduce).
    ReduceBcast,
    /// Every rank sends to every other rank in one step: each takes every
    /// operand and combines them itself (allreduce; "one-shot"), or every
    /// block (allgather).
    Direct,
    /// Each rank takes its block of every operand, combines it and sends
    /// it to every other rank: two steps (allreduce; "two-shot").
    TwoShot,
    /// Recursive halving (reduce_scatter_block).
    Halving,
    /// Binomial tree (bcast, reduce, scatter, gather).
    Binomial,
    /// Scatter, then ring allgather (bcast).
    ScatterAllgather,
    /// Pipelined chain (bcast).
    Chain,
    /// Bruck (allgather, alltoall).
    Bruck,
    /// Straight from and to the root (scatter, gather).
    Linear,
    /// Pairwise exchange (alltoall).
    Pairwise,
}

const COLLECTIVES: [(Collective, &str); 8] = [
    (Collective::Allreduce, "allreduce"),
    (Collective::Bcast, "bcast"),
    (Collective::Reduce, "reduce"),
    (Collective::Allgather, "allgather"),
    (Collective::ReduceScatterBlock, "reduce_scatter_block"),
    (Collective::Scatter, "scatter"),
    (Collective::Gather, "gather"),
    (Collective::Alltoall, "alltoall"),
];

const ALGORITHMS: [(Algorithm, &str); 14] = [
    (Algorithm::Ring, "ring"),
    (Algorithm::SegmentedRing, "segmented_ring"),
    (Algorithm::RecursiveDoubling, "recursive_doubling"),
    (Algorithm::Rabenseifner, "rabenseifner"),
    (Algorithm::ReduceBcast, "reduce_bcast"),
    (Algorithm::Direct, "direct"),
    (Algorithm::TwoShot, "two_shot"),
    (Algorithm::Halving, "halving"),
    (Algorithm::Binomial, "binomial"),
    (Algorithm::ScatterAllgather, "scatter_allgather"),
    (Algorithm::Chain, "chain"),
    (Algorithm::Bruck, "bruck"),
    (Algorithm::Linear, "linear"),
    (Algorithm::Pairwise, "pairwise"),
];

impl Collective {
    /// Its name in a tuning file.
    pub fn name(self) -> &'static str {
        COLLECTIVES.iter().find(|c| c.0 == self).map_or("?", |c| c.1)
    }

    /// Every collective a table covers.
    pub fn all() -> impl Iterator<Item = Collective> {
        COLLECTIVES.iter().map(|c| c.0)
    }
}

impl Algorithm {
    /// Its name in a tuning file.
    pub fn name(self) -> &'static str {
        ALGORITHMS.iter().find(|a| a.0 == self).map_or("?", |a| a.1)
    }

    /// Whether it implements `c`.
    pub fn applies_to(self, c: Collective) -> bool {
        use Algorithm as A;
        use Collective as C;
        match c {
            C::Allreduce => matches!(
                self,
                A::Ring
                    | A::SegmentedRing
                    | A::RecursiveDoubling
                    | A::Rabenseifner
                    | A::ReduceBcast
                    | A::Direct
                    | A::TwoShot
            ),
            C::Bcast => matches!(self, A::Binomial | A::ScatterAllgather | A::Chain),
            C::Reduce => matches!(self, A::Binomial),
            C::Allgather => matches!(self, A::Ring | A::Bruck | A::RecursiveDoubling | A::Direct),
            C::ReduceScatterBlock => matches!(self, A::Ring | A::Halving),
            C::Scatter | C::Gather => matches!(self, A::Binomial | A::Linear),
            C::Alltoall => matches!(self, A::Pairwise | A::Bruck),
        }
    }

    /// The algorithms that implement `c`.
    pub fn for_collective(c: Collective) -> impl Iterator<Item = Algorithm> {
        ALGORITHMS.iter().map(|a| a.0).filter(move |a| a.applies_to(c))
    }
}

impl FromStr for Collective {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        COLLECTIVES
            .iter()
            .find(|c| c.1 == s)
            .map(|c| c.0)
            .ok_or_else(|| bad(format!("no collective named {s:?}")))
    }
}

impl FromStr for Algorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ALGORITHMS
            .iter()
            .find(|a| a.1 == s)
            .map(|a| a.0)
            .ok_or_else(|| bad(format!("no algorithm named {s:?}")))
    }
}

fn bad(message: String) -> Error {
    Error::new(std::io::ErrorKind::InvalidData, message)
}

/// One rule: for `collective` with at most `max_ranks` ranks and
/// `max_bytes` bytes, run `algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The collective it covers.
    pub collective: Collective,
    /// The most ranks (`None`: any).
    pub max_ranks: Option<usize>,
    /// The most bytes per rank (`None`: any).
    pub max_bytes: Option<u64>,
    /// The algorithm to run.
    pub algorithm: Algorithm,
}

/// An ordered table of rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    rules: Vec<Rule>,
}

/// What every table falls back to for a collective no rule covers.
fn fallback(c: Collective) -> Algorithm {
    match c {
        Collective::Allreduce | Collective::Allgather | Collective::ReduceScatterBlock => Algorithm::Ring,
        Collective::Bcast | Collective::Reduce | Collective::Scatter | Collective::Gather => Algorithm::Binomial,
        Collective::Alltoall => Algorithm::Pairwise,
    }
}

impl Tuning {
    /// A table of `rules` (checked: each algorithm implements its
    /// collective).
    ///
    /// # Errors
    /// `InvalidData` naming the first rule that does not.
    pub fn new(rules: Vec<Rule>) -> Result<Self> {
        if let Some(r) = rules.iter().find(|r| !r.algorithm.applies_to(r.collective)) {
            return Err(bad(format!(
                "{} does not implement {}",
                r.algorithm.name(),
                r.collective.name()
            )));
        }
        Ok(Self { rules })
    }

    /// The built-in table, for when no measured table is at hand: what
    /// `mfio-bench coll --tune` chose over UCX with 2 and 3 ranks
    /// (BENCHMARKS.md), latency-bound algorithms for short messages and
    /// the two-shot allreduce for long ones on up to 4 ranks (a one-step
    /// reduce-scatter, then a one-step allgather: the ring's bytes in two
    /// steps), the ring beyond. On 2 ranks recursive doubling up to 1 MiB
    /// (one exchange instead of two; at 1 MiB 8 and 11 % faster than the
    /// ring in two of three full runs, 2 % slower in the other). On 3
    /// ranks the direct allreduce above 16 KiB up to 256 KiB (one step
    /// instead of recursive doubling's three; at 64 KiB 15–35 % faster in
    /// three runs of four, slower up to 16 KiB, where recursive doubling's
    /// short messages travel in their frames). The two-shot allreduce on 2
    /// ranks above 1 MiB, on 3 above 256 KiB, and on 4 above 64 KiB up to 4
    /// MiB. In runs of every algorithm over UCX it was the fastest there
    /// but in two rows of one run each (3 ranks, 512 KiB: recursive
    /// doubling 7 % ahead; 16 MiB: reduce then bcast 1 % ahead): 3 ranks,
    /// 1 MiB 1.13–1.14× the ring's calls a second, 512 KiB 1.3–1.4× the direct
    /// one's; 2 ranks, 4 and 16 MiB 1.19–1.35× the ring's; 4 ranks, 128
    /// KiB to 4 MiB 1.06–1.29× the next best. The
    /// binomial bcast at every length on 2 and
    /// 3 ranks (with long messages landing in place it beats the chain
    /// there), the pipelined chain for long ones on more ranks, where a
    /// tree sends the whole message log₂ n times; the direct allgather on
    /// up to 4 ranks above 16 KiB (2 and 3 ranks) or 8 KiB (4), every block
    /// in one step as Open MPI's non-blocking allgather sends them (64 KiB
    /// on 3 ranks: 42 against the ring's 66 µs a call, 0.65× in five paired
    /// runs; 0.61× on 4 ranks; even with the ring at 1 and 16 MiB, where
    /// both move the same bytes), the ring below that on 2 and 3 ranks
    /// (each of its blocks one step, short ones in their frames); Bruck's
    /// allgather for short messages at other rank counts, where it takes
    /// fewer steps.
    pub fn builtin() -> Self {
        const TABLE: &str = "
            allreduce            2  1048576  recursive_doubling
            allreduce            3  16384    recursive_doubling
            allreduce            3  262144   direct
            allreduce            3  *        two_shot
            allreduce            *  65536    recursive_doubling
            allreduce            4  4194304  two_shot
            allreduce            *  *        ring
            bcast                2  *        binomial
            bcast                3  *        binomial
            bcast                *  65536    binomial
            bcast                *  *        chain
            reduce               *  *        binomial
            allgather            2  1024     recursive_doubling
            allgather            3  16384    ring
            allgather            4  8192     bruck
            allgather            4  *        direct
            allgather            *  32768    bruck
            allgather            *  *        ring
            reduce_scatter_block *  65536    halving
            reduce_scatter_block *  *        ring
            scatter              *  *        binomial
            gather               *  *        binomial
            alltoall             *  1024     bruck
            alltoall             *  *        pairwise
        ";
        Self::parse(TABLE).unwrap_or(Self { rules: Vec::new() })
    }

    /// The table in `MFIO_COLL_TUNING`'s file, or the built-in one if the
    /// variable is not set.
    ///
    /// # Errors
    /// The file cannot be read, or does not parse.
    pub fn from_env() -> Result<Self> {
        match std::env::var_os(TUNING_VAR) {
            Some(path) => Self::load(std::path::Path::new(&path)),
            None => Ok(Self::builtin()),
        }
    }

    /// Reads a table from `path`.
    ///
    /// # Errors
    /// The file cannot be read (with its path), or does not parse.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::new(e.kind(), format!("tuning file {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| Error::new(e.kind(), format!("tuning file {}: {e}", path.display())))
    }

    /// Parses the text form (see the module docs).
    ///
    /// # Errors
    /// `InvalidData` naming the line that does not parse.
    pub fn parse(text: &str) -> Result<Self> {
        let limit = |s: &str, what: &str, line: usize| -> Result<Option<u64>> {
            if s == "*" {
                return Ok(None);
            }
            s.parse::<u64>()
                .map(Some)
                .map_err(|_| bad(format!("line {line}: {what} {s:?} is not a number or *")))
        };
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let [c, ranks, bytes, a] = words[..] else {
                return Err(bad(format!(
                    "line {}: expected `collective ranks bytes algorithm`, got {line:?}",
                    i + 1
                )));
            };
            let at = |e: Error| bad(format!("line {}: {e}", i + 1));
            let max_ranks = limit(ranks, "ranks", i + 1)?
                .map(|r| usize::try_from(r).map_err(|_| bad(format!("line {}: too many ranks", i + 1))))
                .transpose()?;
            rules.push(Rule {
                collective: c.parse().map_err(at)?,
                max_ranks,
                max_bytes: limit(bytes, "bytes", i + 1)?,
                algorithm: a.parse().map_err(at)?,
            });
        }
        Self::new(rules)
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The algorithm for `collective` over `ranks` ranks with `bytes` per
    /// rank: the first rule that fits, else the collective's fallback.
    pub fn choose(&self, collective: Collective, ranks: usize, bytes: u64) -> Algorithm {
        self.rules
            .iter()
            .find(|r| {
                r.collective == collective
                    && r.max_ranks.is_none_or(|m| ranks <= m)
                    && r.max_bytes.is_none_or(|m| bytes <= m)
            })
            .map_or(fallback(collective), |r| r.algorithm)
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Self::builtin()
    }
}

/// The text form, which [`Tuning::parse`] reads back.
impl fmt::Display for Tuning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limit = |l: Option<u64>| l.map_or("*".to_owned(), |v| v.to_string());
        for r in &self.rules {
            writeln!(
                f,
                "{:<21} {:>4} {:>10}  {}",
                r.collective.name(),
                limit(r.max_ranks.map(|m| m as u64)),
                limit(r.max_bytes),
                r.algorithm.name()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_table_parses_and_covers_every_collective() {
        let t = Tuning::builtin();
        assert!(t.rules().len() >= 15, "{t}");
        for c in Collective::all() {
            assert!(t.rules().iter().any(|r| r.collective == c), "{} has no rule", c.name());
        }
        assert_eq!(t.choose(Collective::Allreduce, 4, 8), Algorithm::RecursiveDoubling);
        assert_eq!(t.choose(Collective::Allreduce, 2, 4096), Algorithm::RecursiveDoubling);
        assert_eq!(
            t.choose(Collective::Allreduce, 2, 1 << 20),
            Algorithm::RecursiveDoubling
        );
        assert_eq!(t.choose(Collective::Allreduce, 2, 4 << 20), Algorithm::TwoShot);
        assert_eq!(
            t.choose(Collective::Allreduce, 3, 16 << 10),
            Algorithm::RecursiveDoubling
        );
        assert_eq!(t.choose(Collective::Allreduce, 3, 64 << 10), Algorithm::Direct);
        assert_eq!(t.choose(Collective::Allreduce, 3, 256 << 10), Algorithm::Direct);
        assert_eq!(t.choose(Collective::Allreduce, 3, 512 << 10), Algorithm::TwoShot);
        assert_eq!(t.choose(Collective::Allreduce, 3, 16 << 20), Algorithm::TwoShot);
        assert_eq!(
            t.choose(Collective::Allreduce, 4, 64 << 10),
            Algorithm::RecursiveDoubling
        );
        assert_eq!(t.choose(Collective::Allreduce, 4, 128 << 10), Algorithm::TwoShot);
        assert_eq!(t.choose(Collective::Allreduce, 4, 4 << 20), Algorithm::TwoShot);
        assert_eq!(t.choose(Collective::Allreduce, 4, 16 << 20), Algorithm::Ring);
        assert_eq!(t.choose(Collective::Allreduce, 5, 1 << 20), Algorithm::Ring);
        assert_eq!(t.choose(Collective::Bcast, 3, 8), Algorithm::Binomial);
        assert_eq!(t.choose(Collective::Bcast, 3, 16 << 20), Algorithm::Binomial);
        assert_eq!(t.choose(Collective::Bcast, 8, 1 << 20), Algorithm::Chain);
        assert_eq!(t.choose(Collective::Allgather, 3, 8), Algorithm::Ring);
        assert_eq!(t.choose(Collective::Allgather, 3, 16 << 10), Algorithm::Ring);
        assert_eq!(t.choose(Collective::Allgather, 3, 64 << 10), Algorithm::Direct);
        assert_eq!(t.choose(Collective::Allgather, 3, 16 << 20), Algorithm::Direct);
        assert_eq!(t.choose(Collective::Allgather, 2, 4096), Algorithm::Ring);
        assert_eq!(t.choose(Collective::Allgather, 2, 64 << 10), Algorithm::Direct);
        assert_eq!(t.choose(Collective::Allgather, 4, 8), Algorithm::Bruck);
        assert_eq!(t.choose(Collective::Allgather, 4, 32 << 10), Algorithm::Direct);
        assert_eq!(t.choose(Collective::Allgather, 5, 8), Algorithm::Bruck);
        assert_eq!(t.choose(Collective::Allgather, 5, 64 << 10), Algorithm::Ring);
    }

    #[test]
    fn the_text_form_reads_back() {
        let t = Tuning::builtin();
        assert_eq!(Tuning::parse(&t.to_string()).expect("reads back"), t);
    }

    #[test]
    fn bad_tables_name_the_line() {
        for (text, needle) in [
            ("allreduce * * ring\nbcast * * ring", "ring does not implement bcast"),
            ("allreduce * x ring", "line 1: bytes \"x\""),
            ("\n# c\nallreduce * *", "line 3"),
            ("allgathr * * ring", "line 1: no collective named \"allgathr\""),
            ("allgather * * rung", "line 1: no algorithm named \"rung\""),
        ] {
            match Tuning::parse(text) {
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
                    assert!(e.to_string().contains(needle), "{text:?}: {e}");
                }
                Ok(t) => panic!("{text:?} parsed: {t}"),
            }
        }
    }

    #[test]
    fn a_collective_without_rules_falls_back() {
        let t = Tuning::parse("allreduce * 10 recursive_doubling").expect("parses");
        assert_eq!(t.choose(Collective::Allreduce, 3, 10), Algorithm::RecursiveDoubling);
        assert_eq!(t.choose(Collective::Allreduce, 3, 11), Algorithm::Ring);
        assert_eq!(t.choose(Collective::Alltoall, 3, 11), Algorithm::Pairwise);
    }
}
