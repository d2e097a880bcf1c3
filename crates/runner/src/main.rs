//! `mtrec`: train, compare, list and print multi-task models.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mtrec_runner::compare::compare_and_write;
use mtrec_runner::config::{self, LoadedConfig, ModelSection};
use std::cell::RefCell;

use mtrec_runner::progress::RunProgress;
use mtrec_runner::run::{
    default_run_dir, eval_file_with, graph_config_text, load_run_config, predict_file, run_with, RunOptions,
};
use mtrec_runner::{link_builtin_plugins, Result, RunError};
use mtrec_train::{domain_table, metrics_table};

// candle allocates a fresh output for every op: mimalloc's thread-local free
// lists make that cheap (docs/performance.md: +10-30% training throughput).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "mtrec", version, about = "Multi-task and multi-domain recommendation models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// Architecture; overrides the config's `model.arch` (its model
    /// parameters are then dropped unless the config names the same one).
    #[arg(long)]
    arch: Option<String>,
    /// Config file; without it, the architecture's defaults on the built-in
    /// synthetic data.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. `--set train.epochs=5 --set data.correlation=0.9`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Folder that relative data paths start from (default: $MTREC_DATA_DIR,
    /// else the config file's folder).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Onnx,
}

#[derive(Subcommand)]
enum Command {
    /// Train and evaluate one config; print per-task metrics; write a run folder.
    Run {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Run folder (default: a fresh `runs/<arch>-<time>`).
        #[arg(long, conflicts_with = "resume")]
        out: Option<PathBuf>,
        /// Continue the interrupted run in this folder from its last finished
        /// epoch, with the config saved there.
        #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["arch", "config", "sets"])]
        resume: Option<PathBuf>,
        /// Warm start: train the model of this finished run further on the
        /// config's files, with the run's preprocessing and best weights (a
        /// fresh optimizer). The config's [model], columns and tasks must be
        /// the run's.
        #[arg(long, value_name = "RUN_DIR", conflicts_with = "resume")]
        init_from: Option<PathBuf>,
        /// With --init-from: append ids first seen in the new training rows
        /// to the vocabularies (new embedding rows start fresh, trained rows
        /// are kept); without it they are out-of-vocabulary, as in serving.
        #[arg(long, requires = "init_from")]
        grow_vocabularies: bool,
        /// With --init-from: continue the run's optimizer state (Adam
        /// moments and step counts of its last epoch) instead of a fresh
        /// optimizer. Not with --grow-vocabularies.
        #[arg(long, requires = "init_from", conflicts_with = "grow_vocabularies")]
        init_optimizer: bool,
        /// Print only the final report.
        #[arg(long)]
        quiet: bool,
    },
    /// Train several architectures on the same data and seeds; print test
    /// metric mean ± std per task.
    Compare {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Comma-separated architectures, run with the config's model if it
        /// has that architecture, else with the template's defaults;
        /// single-task (the reference of the MTL gain) is added when missing.
        #[arg(long, value_delimiter = ',')]
        archs: Vec<String>,
        /// Comma-separated config files whose `[model]` sections are compared
        /// (data and training always come from --config).
        #[arg(long, value_delimiter = ',')]
        models: Vec<PathBuf>,
        /// Number of seeds (1..=N).
        #[arg(long, default_value_t = 5)]
        seeds: u64,
        /// Folder for compare.md, compare.json and the bar charts
        /// (compare-<metric>.png/.svg; per domain: compare-domains-<metric>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write one score column per task for the rows of a file (probabilities
    /// for binary tasks), with a model trained on tabular data.
    Predict {
        /// A finished run folder.
        #[arg(long, value_name = "RUN_DIR")]
        model: PathBuf,
        /// A file in the training data's format (labels not needed).
        #[arg(long)]
        input: PathBuf,
        /// The CSV file to write.
        #[arg(long)]
        output: PathBuf,
    },
    /// Print the metrics of a trained model on a labelled file.
    Eval {
        #[arg(long, value_name = "RUN_DIR")]
        model: PathBuf,
        #[arg(long)]
        input: PathBuf,
        /// Weigh every metric by the rows' sample weights (`true`) or not
        /// (`false`); by default as the run's `[eval] weighted` says.
        #[arg(long, value_name = "BOOL")]
        weighted: Option<bool>,
    },
    /// Reproduce a paper's experiment; `mmoe-synthetic`: the MMoE paper's
    /// synthetic data at correlations 0.5/0.9/1.0, Shared-Bottom, OMoE, MMoE,
    /// CGC and PLE (models, data size and training from configs/<arch>.toml).
    Reproduce {
        /// The experiment: `mmoe-synthetic`.
        experiment: String,
        /// Seeds 1..=N (new data and initialisation each); about a minute
        /// per seed on 2 cores with the configs' 40k rows. The outputs are
        /// rewritten after every seed.
        #[arg(long, default_value_t = 10)]
        seeds: u64,
        /// Output folder (table, JSON, plots).
        #[arg(long, default_value = "runs/mmoe-synthetic")]
        out: PathBuf,
        /// Folder holding <arch>.toml.
        #[arg(long, default_value = "configs")]
        configs: PathBuf,
        /// Overrides applied to every model's config, e.g. `--set data.rows=10000
        /// --set train.epochs=10` for a quick look.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// List the registered architectures and component kinds.
    List,
    /// Print the graph an architecture expands to, as a runnable config.
    Graph {
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Export a trained model: `OUT/model.onnx` (inputs: the encoded
    /// tensors the preprocessing produces; one output per task) and the
    /// fitted preprocessing beside it, `OUT/preprocess.json` (crates/export).
    Export {
        /// A finished run folder.
        #[arg(long, value_name = "RUN_DIR")]
        model: PathBuf,
        #[arg(long, value_enum, default_value = "onnx")]
        format: ExportFormat,
        /// The folder to write.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Serve trained models over HTTP (TF-Serving / KServe v1 JSON), raw rows
    /// preprocessed as in training, with dynamic batching (crates/serve).
    Serve(mtrec_serve::cli::ServeArgs),
    /// Load-test a served model on loopback: throughput and p50/p99 latency
    /// at several concurrencies (crates/serve).
    Loadgen(mtrec_serve::cli::LoadgenArgs),
}

fn load(args: &ConfigArgs) -> Result<LoadedConfig> {
    let mut loaded = load_inner(args)?;
    loaded.data_dir = args.data_dir.clone();
    Ok(loaded)
}

fn load_inner(args: &ConfigArgs) -> Result<LoadedConfig> {
    let mut loaded = match (&args.config, &args.arch) {
        (Some(file), _) => config::load(file, &args.sets)?,
        (None, Some(arch)) => config::parse(
            &config::default_text(arch),
            std::path::Path::new("<built-in default config>"),
            &args.sets,
        )?,
        (None, None) => {
            return Err(RunError::Usage(
                "give --arch NAME or --config FILE (see `mtrec list`)".into(),
            ))
        }
    };
    if let Some(arch) = &args.arch {
        mtrec_core::registry::architecture(arch)?;
        if &loaded.config.model.arch != arch {
            loaded.set_model(ModelSection {
                arch: arch.clone(),
                params: toml::Table::new(),
            })?;
        }
    }
    Ok(loaded)
}

fn main() -> ExitCode {
    mtrec_runner::alloc::keep_freed_memory();
    mtrec_runner::threads::one_compute_pool();
    link_builtin_plugins();
    // MPI (feature `distributed`, under mpirun), finalized when dropped;
    // a failing rank aborts every rank while it is still in the job.
    let _world = match mtrec_runner::distributed::init() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            mtrec_runner::distributed::abort_if_distributed(&e);
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    mtrec_runner::distributed::check_command_distributes(matches!(cli.command, Command::Run { .. }))?;
    match cli.command {
        Command::Run {
            cfg,
            out,
            resume,
            init_from,
            grow_vocabularies,
            init_optimizer,
            quiet,
        } => {
            let resuming = resume.is_some();
            let (loaded, dir) = match resume {
                Some(dir) => {
                    check_resumable(&dir)?;
                    let mut c = load_run_config(&dir)?;
                    c.data_dir = cfg.data_dir.clone();
                    (c, dir)
                }
                None => {
                    let c = load(&cfg)?;
                    let dir = out.unwrap_or_else(|| default_run_dir(&c.config.model.arch));
                    (c, dir)
                }
            };
            let quiet = quiet || !mtrec_runner::distributed::is_root();
            let progress = RefCell::new(RunProgress::new(loaded.config.train.epochs, quiet));
            let mut on_read = |p: &mtrec_data::Progress<'_>| progress.borrow_mut().on_read(p);
            let mut hook = mtrec_runner::distributed::batch_hook()?;
            let mut on_batch = |b: &mtrec_train::BatchProgress| {
                hook(b);
                progress.borrow_mut().on_batch(b)
            };
            let opts = RunOptions {
                out: Some(dir.clone()),
                resume: resuming,
                on_read: Some(&mut on_read),
                on_batch: Some(&mut on_batch),
                on_test: None,
                init_from: init_from.map(|dir| mtrec_runner::run::InitFrom {
                    dir,
                    grow_vocabularies,
                    optimizer: init_optimizer,
                }),
            };
            let result = run_with(&loaded, opts, |log| progress.borrow_mut().on_epoch(log));
            progress.borrow().finish();
            let result = result?;
            if mtrec_runner::distributed::is_root() {
                println!("{}", result.report.render());
                println!("run folder: {}", dir.display());
            }
        }
        Command::Predict { model, input, output } => {
            let rows = predict_file(&model, &input, &output)?;
            println!("{rows} rows scored: {}", output.display());
        }
        Command::Eval { model, input, weighted } => {
            let eval = weighted.map(|weighted| mtrec_train::EvalConfig { weighted });
            let ev = eval_file_with(&model, &input, eval)?;
            print!("{}", metrics_table(&[("eval", &ev)]));
            if !ev.domains.is_empty() {
                print!("\n{}", domain_table(&ev));
            }
        }
        Command::Compare {
            cfg,
            mut archs,
            models,
            seeds,
            out,
        } => {
            let loaded = load(&cfg)?;
            if archs.is_empty() && models.is_empty() {
                archs = ["single-task", "shared-bottom", "omoe", "mmoe"]
                    .map(String::from)
                    .to_vec();
            }
            let seeds: Vec<u64> = (1..=seeds).collect();
            let (cmp, written) = compare_and_write(&loaded, &archs, &models, &seeds, out.as_deref(), |line| {
                eprintln!("{line}")
            })?;
            println!("{}", cmp.markdown());
            if let Some(dir) = out {
                println!("written to {}: {}", dir.display(), file_names(&written));
            }
        }
        Command::Reproduce {
            experiment,
            seeds,
            out,
            configs,
            sets,
        } => {
            if experiment != "mmoe-synthetic" {
                return Err(RunError::Usage(format!(
                    "unknown experiment `{experiment}`; known: mmoe-synthetic"
                )));
            }
            if seeds == 0 {
                return Err(RunError::Usage("--seeds must be at least 1".into()));
            }
            let cells = mtrec_runner::reproduce::mmoe_synthetic(&configs, seeds, &sets, &out, |l| eprintln!("{l}"))?;
            println!("{}", mtrec_runner::reproduce::markdown(&cells, seeds));
            println!("written: {}", out.display());
        }
        Command::List => {
            println!("architectures:");
            for (name, a) in mtrec_core::registry::architectures()? {
                println!("  {name:<16} {}", a.summary());
            }
            println!("\ncomponent kinds (for arch = \"graph\"):");
            for (name, k) in mtrec_core::registry::components()? {
                println!("  {name:<20} {:<7} {}", k.role().as_str(), k.summary());
            }
        }
        Command::Graph { cfg } => {
            let loaded = load(&cfg)?;
            print!("{}", graph_config_text(&loaded)?);
        }
        Command::Export {
            model,
            format: ExportFormat::Onnx,
            out,
        } => {
            let t = mtrec_runner::run::load_trained(&model)?;
            let domains = t.preprocessor.domain.as_ref().map_or(0, |d| d.names.len());
            let pre = model.join(mtrec_runner::run::PREPROCESS_FILE);
            let [single] = t.models.as_slice() else {
                return Err(mtrec_runner::RunError::RunFolder {
                    dir: model.clone(),
                    problem: format!(
                        "is a single-task run of {} models (one per task): export each from its folder `tasks/<task>/`",
                        t.models.len()
                    ),
                });
            };
            let path = mtrec_export::export(single, domains, &pre, &out)?;
            println!(
                "written: {} and {}",
                path.display(),
                out.join(mtrec_export::PREPROCESS_FILE).display()
            );
        }
        Command::Serve(args) => mtrec_serve::cli::serve(args, &|dir| {
            let t = mtrec_runner::run::load_trained(dir).map_err(|e| e.to_string())?;
            Ok(mtrec_serve::ModelParts {
                models: t.models,
                preprocessor: t.preprocessor,
                arch: t.config.model.arch,
            })
        })
        .map_err(|e| RunError::Usage(e.to_string()))?,
        Command::Loadgen(args) => {
            mtrec_serve::cli::loadgen(args).map_err(|e| RunError::Usage(e.to_string()))?;
        }
    }
    Ok(())
}

/// The file names of `paths`, comma-separated.
fn file_names(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `--resume DIR` continues only a run that has a checkpoint.
fn check_resumable(dir: &std::path::Path) -> Result<()> {
    if mtrec_runner::run::has_checkpoint(dir) {
        Ok(())
    } else {
        Err(RunError::Usage(format!(
            "{} has no checkpoint: the run stopped before its first epoch ended (start it again), or it is not a run folder",
            dir.display()
        )))
    }
}
