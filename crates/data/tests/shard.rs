//! Reading a data set as one of several readers (the ranks of a
//! data-parallel run, `ShardRead`): each keeps exactly its stripe of the
//! training rows, validation and test rows whole, and every reader forms
//! the preprocessing of all training rows (the fit's counts added across
//! readers).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};

use mtrec_data::preprocess::Encoding;
use mtrec_data::{
    load_split, load_split_sharded, FitCounts, Fitting, LoadedSingle, Part, Preprocessor, ShardRead, StreamOptions,
    StreamedData, Stripe, TabularSchema, TaskSpec,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    data: TabularSchema,
    tasks: Vec<TaskSpec>,
}

/// The task's label is the row's number in its file, so that rows can be
/// told apart after encoding.
fn config(files: &str) -> Config {
    toml::from_str(&format!(
        r#"
[data]
{files}
columns = ["city", "spend", "site", "rid"]
sparse = [{{ name = "city", min_count = 2 }}]
dense = [{{ name = "spend", scaling = "standard" }}]
domain = "site"

[[tasks]]
name = "rid"
kind = "regression"
label = {{ column = "rid" }}
"#
    ))
    .unwrap()
}

/// `n` rows: skewed cities (some rarer than min_count), spend values whose
/// mean and spread differ between early and late rows, three sites.
fn rows(n: usize, salt: usize) -> String {
    let mut s = String::from("city,spend,site,rid\n");
    for i in 0..n {
        let city = match (i * 7 + salt) % 11 {
            0..=4 => "paris".to_string(),
            5..=7 => "rome".to_string(),
            8 | 9 => format!("c{}", i % 13),
            _ => format!("rare{i}"),
        };
        let spend = if (i + salt) % 9 == 0 {
            "?".to_string()
        } else {
            format!("{}", (i as f64 * 0.37).sin() * 50.0 + i as f64 * 0.5)
        };
        s.push_str(&format!("{city},{spend},s{},{i}\n", (i + salt) % 3));
    }
    s
}

fn temp_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("mtrec-shard-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `read(rank, merge)` on `ranks` threads whose `merge` adds every
/// thread's fit counts (in rank order, as the ranks' all-gather does).
fn as_ranks<T: Send>(
    ranks: usize,
    read: impl Fn(usize, &dyn Fn(FitCounts) -> mtrec_data::Result<FitCounts>) -> T + Sync,
) -> Vec<T> {
    let slots: Mutex<Vec<Option<FitCounts>>> = Mutex::new(vec![None; ranks]);
    let barrier = Barrier::new(ranks);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..ranks)
            .map(|r| {
                let (slots, barrier, read) = (&slots, &barrier, &read);
                s.spawn(move || {
                    let merge = |own: FitCounts| {
                        slots.lock().unwrap()[r] = Some(own);
                        barrier.wait();
                        let all = slots.lock().unwrap().clone();
                        barrier.wait();
                        let mut it = all.into_iter().map(Option::unwrap);
                        let mut sum = it.next().unwrap();
                        for c in it {
                            sum.merge(c)?;
                        }
                        Ok(sum)
                    };
                    read(r, &merge)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The row numbers (labels) of `rows` of a loaded set.
fn ids(l: &LoadedSingle, rows: &[usize]) -> Vec<u32> {
    rows.iter().map(|&i| l.data.labels[i] as u32).collect()
}

fn vocab(p: &Preprocessor) -> (Vec<String>, Vec<u64>, u64) {
    match &p.sparse[0].encoding {
        Encoding::Vocab { vocab } => (vocab.values().to_vec(), vocab.counts().to_vec(), vocab.oov_count()),
        Encoding::Hash { .. } => panic!("city has a vocabulary"),
    }
}

/// Every reader's preprocessing is the same, and that of one reader of all
/// rows: vocabularies, out-of-vocabulary counts and domains exactly, the
/// dense statistics to rounding.
fn same_fit(parts: &[&Preprocessor], whole: &Preprocessor) {
    for p in parts {
        assert_eq!(p.to_json().unwrap(), parts[0].to_json().unwrap(), "readers differ");
        assert_eq!(vocab(p), vocab(whole));
        assert_eq!(p.domain.as_ref().unwrap().names, whole.domain.as_ref().unwrap().names);
        assert_eq!(p.train_rows, whole.train_rows);
        let (a, b) = (&p.dense[0], &whole.dense[0]);
        assert_eq!(a.count, b.count);
        assert!(
            (a.mean - b.mean).abs() <= 1e-12 * b.mean.abs().max(1.0),
            "{} vs {}",
            a.mean,
            b.mean
        );
        assert!((a.std - b.std).abs() <= 1e-12 * b.std, "{} vs {}", a.std, b.std);
        assert_eq!((a.min, a.max), (b.min, b.max));
    }
}

fn sharded(cfg: &Config, dir: &Path, ranks: usize) -> Vec<LoadedSingle> {
    as_ranks(ranks, |r, merge| {
        let shard = ShardRead {
            stripe: Stripe::new(r, ranks).unwrap(),
            merge,
        };
        load_split_sharded(
            &cfg.data,
            &cfg.tasks,
            Some(dir),
            [0.7, 0.15, 0.15],
            5,
            Fitting::Fresh,
            Some(shard),
            None,
        )
        .unwrap()
    })
}

#[test]
fn three_files_each_rank_keeps_its_stripe_of_the_train_file() {
    let dir = temp_dir();
    std::fs::write(dir.join("train.csv"), rows(103, 0)).unwrap();
    std::fs::write(dir.join("valid.csv"), rows(20, 1)).unwrap();
    std::fs::write(dir.join("test.csv"), rows(25, 2)).unwrap();
    let cfg = config(
        r#"train = "train.csv"
valid = "valid.csv"
test = "test.csv""#,
    );
    let whole = load_split(&cfg.data, &cfg.tasks, Some(&dir), [0.7, 0.15, 0.15], 5, None).unwrap();
    for ranks in [1, 2, 3] {
        let parts = sharded(&cfg, &dir, ranks);
        same_fit(
            &parts.iter().map(|l| &l.preprocessor).collect::<Vec<_>>(),
            &whole.preprocessor,
        );
        for (r, l) in parts.iter().enumerate() {
            // Train rows r, r + ranks, ... of the file, in file order.
            let want: Vec<u32> = (0..103).filter(|i| i % ranks == r).map(|i| i as u32).collect();
            assert_eq!(ids(l, &l.split.train), want, "rank {r} of {ranks}");
            assert_eq!(ids(l, &l.split.valid), ids(&whole, &whole.split.valid));
            assert_eq!(ids(l, &l.split.test), ids(&whole, &whole.split.test));
            let sizes: Vec<usize> = (0..ranks)
                .map(|p| (0..103).filter(|i| i % ranks == p).count())
                .collect();
            assert_eq!(l.train_parts.as_deref(), Some(sizes.as_slice()));
        }
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn one_path_each_rank_keeps_its_stripe_of_the_split_train_rows() {
    let dir = temp_dir();
    std::fs::write(dir.join("all.csv"), rows(157, 3)).unwrap();
    let cfg = config(r#"path = "all.csv""#);
    let whole = load_split(&cfg.data, &cfg.tasks, Some(&dir), [0.7, 0.15, 0.15], 5, None).unwrap();
    let whole_train = ids(&whole, &whole.split.train);
    for ranks in [2, 3] {
        let parts = sharded(&cfg, &dir, ranks);
        same_fit(
            &parts.iter().map(|l| &l.preprocessor).collect::<Vec<_>>(),
            &whole.preprocessor,
        );
        let mut union = Vec::new();
        for (r, l) in parts.iter().enumerate() {
            // The split's train rows of this stripe, in the split's order.
            let want: Vec<u32> = whole_train
                .iter()
                .copied()
                .filter(|&i| i as usize % ranks == r)
                .collect();
            assert_eq!(ids(l, &l.split.train), want, "rank {r} of {ranks}");
            assert_eq!(ids(l, &l.split.valid), ids(&whole, &whole.split.valid));
            assert_eq!(ids(l, &l.split.test), ids(&whole, &whole.split.test));
            // Rows held: the stripe's train rows and every other row.
            assert_eq!(
                l.data.rows(),
                want.len() + whole.split.valid.len() + whole.split.test.len()
            );
            assert_eq!(l.train_parts.as_ref().unwrap()[r], want.len());
            union.extend(want);
        }
        union.sort_unstable();
        let mut all = whole_train.clone();
        all.sort_unstable();
        assert_eq!(union, all, "every training row on exactly one rank");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn streamed_each_rank_reads_its_stripe_of_the_train_part() {
    let dir = temp_dir();
    std::fs::write(dir.join("all.csv"), rows(211, 4)).unwrap();
    let cfg = config(r#"path = "all.csv""#);
    let options = StreamOptions {
        chunk_rows: 16,
        shuffle_buffer: 32,
    };
    fn open(cfg: &Config, dir: &Path, options: StreamOptions, shard: Option<ShardRead<'_>>) -> StreamedData {
        StreamedData::open_sharded(
            &cfg.data,
            &cfg.tasks,
            Some(dir),
            [0.6, 0.2, 0.2],
            9,
            options,
            Fitting::Fresh,
            shard,
            None,
        )
        .unwrap()
    }
    let whole = open(&cfg, &dir, options, None);
    let rows_of = |d: &StreamedData, part: Part| -> Vec<u32> {
        d.chunks(part)
            .flat_map(|c| c.unwrap().labels.into_iter().map(|x| x as u32))
            .collect()
    };
    let whole_train = rows_of(&whole, Part::Train);
    let parts = as_ranks(3, |r, merge| {
        let shard = ShardRead {
            stripe: Stripe::new(r, 3).unwrap(),
            merge,
        };
        open(&cfg, &dir, options, Some(shard))
    });
    same_fit(
        &parts.iter().map(|d| d.preprocessor.as_ref()).collect::<Vec<_>>(),
        &whole.preprocessor,
    );
    let mut union = Vec::new();
    for (r, d) in parts.iter().enumerate() {
        let train = rows_of(d, Part::Train);
        let want: Vec<u32> = whole_train.iter().copied().filter(|&i| i as usize % 3 == r).collect();
        assert_eq!(train, want, "rank {r}");
        assert_eq!(rows_of(d, Part::Valid), rows_of(&whole, Part::Valid));
        assert_eq!(rows_of(d, Part::Test), rows_of(&whole, Part::Test));
        // The shuffled batches of a pass hold the same rows.
        let mut shuffled: Vec<u32> = d
            .batches(Part::Train, 10, Some(7))
            .flat_map(|b| b.unwrap().labels.into_iter().map(|x| x as u32))
            .collect();
        shuffled.sort_unstable();
        let mut sorted = want.clone();
        sorted.sort_unstable();
        assert_eq!(shuffled, sorted);
        union.extend(train);
    }
    union.sort_unstable();
    let mut all = whole_train;
    all.sort_unstable();
    assert_eq!(union, all, "every training row on exactly one rank");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn fit_counts_travel_as_bytes() {
    let dir = temp_dir();
    std::fs::write(dir.join("all.csv"), rows(50, 0)).unwrap();
    let cfg = config(r#"path = "all.csv""#);
    // Merging through the bytes every rank would send gives the same fit.
    let parts = as_ranks(2, |r, merge| {
        let through_bytes = |c: FitCounts| merge(FitCounts::from_bytes(&c.to_bytes()?)?);
        load_split_sharded(
            &cfg.data,
            &cfg.tasks,
            Some(&dir),
            [0.7, 0.15, 0.15],
            5,
            Fitting::Fresh,
            Some(ShardRead {
                stripe: Stripe::new(r, 2).unwrap(),
                merge: &through_bytes,
            }),
            None,
        )
        .unwrap()
    });
    let whole = load_split(&cfg.data, &cfg.tasks, Some(&dir), [0.7, 0.15, 0.15], 5, None).unwrap();
    same_fit(&[&parts[0].preprocessor, &parts[1].preprocessor], &whole.preprocessor);
    assert!(FitCounts::from_bytes(b"{not json").is_err());
    std::fs::remove_dir_all(dir).ok();
}
