//! The built-in architecture plugins, in one list.
//!
//! inventory keeps a registration only if its crate is linked, and rustc
//! drops a crate that nothing references: a binary calls [`link`] to keep
//! every built-in plugin. Adding a built-in plugin takes its dependency in
//! this crate's Cargo.toml and one entry in [`BUILTIN`]; the test below
//! checks the list against what the registry holds.

/// A built-in plugin crate.
pub struct Plugin {
    /// The package name.
    pub package: &'static str,
    /// The architectures it registers.
    pub architectures: &'static [&'static str],
    /// Whether its architectures need data with domains.
    pub multi_domain: bool,
    /// References the crate so that the linker keeps its registrations.
    pub link: fn(),
}

/// Every built-in plugin, by package name.
pub const BUILTIN: &[Plugin] = &[
    Plugin {
        package: "mtrec-adasparse",
        architectures: &["adasparse"],
        multi_domain: true,
        link: mtrec_adasparse::link,
    },
    Plugin {
        package: "mtrec-aitm",
        architectures: &["aitm"],
        multi_domain: false,
        link: mtrec_aitm::link,
    },
    Plugin {
        package: "mtrec-cgc",
        architectures: &["cgc"],
        multi_domain: false,
        link: mtrec_cgc::link,
    },
    Plugin {
        package: "mtrec-mmoe",
        architectures: &["mmoe"],
        multi_domain: false,
        link: mtrec_mmoe::link,
    },
    Plugin {
        package: "mtrec-omoe",
        architectures: &["omoe"],
        multi_domain: false,
        link: mtrec_omoe::link,
    },
    Plugin {
        package: "mtrec-pepnet",
        architectures: &["pepnet"],
        multi_domain: true,
        link: mtrec_pepnet::link,
    },
    Plugin {
        package: "mtrec-ple",
        architectures: &["ple"],
        multi_domain: false,
        link: mtrec_ple::link,
    },
    Plugin {
        package: "mtrec-sar-net",
        architectures: &["sar-net"],
        multi_domain: true,
        link: mtrec_sar_net::link,
    },
    Plugin {
        package: "mtrec-shared-bottom",
        architectures: &["shared-bottom"],
        multi_domain: false,
        link: mtrec_shared_bottom::link,
    },
    Plugin {
        package: "mtrec-single-task",
        architectures: &["single-task"],
        multi_domain: false,
        link: mtrec_single_task::link,
    },
    Plugin {
        package: "mtrec-star",
        architectures: &["star"],
        multi_domain: true,
        link: mtrec_star::link,
    },
];

/// Links every built-in plugin (call once from a binary or a test).
pub fn link() {
    for p in BUILTIN {
        (p.link)();
    }
}

/// The built-in architectures, sorted; `single_domain` keeps those that run
/// on data without domains.
pub fn architectures(single_domain: bool) -> Vec<&'static str> {
    let mut names: Vec<&str> = BUILTIN
        .iter()
        .filter(|p| !(single_domain && p.multi_domain))
        .flat_map(|p| p.architectures.iter().copied())
        .collect();
    names.sort_unstable();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_what_the_registry_holds() {
        link();
        let registered: Vec<&str> = mtrec_core::registry::architectures()
            .map(|a| a.keys().copied().filter(|n| *n != "graph").collect())
            .unwrap_or_default();
        assert_eq!(registered, architectures(false));
    }
}
