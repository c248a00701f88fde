//! The OCI platform (`os/architecture[/variant]`): what a pull picks from an index, what a build
//! targets and hashes into its graph, what an image config records. Written once, in containerd's
//! normal form, so that the builder and the registry agree on what names the same machine.

use std::fmt;

use serde::Serialize;

/// An OCI platform. Values made by [`Platform::parse`] and [`Platform::host`] are in containerd's
/// normal form ([`Platform::normalized`]): lowercase, Go's architecture names, and no variant where
/// the architecture's default one is meant (arm64's v8, amd64's v1); arm always carries one (v7 by
/// default). The builder hashes the three strings as they are, so the normal form is part of every
/// graph identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    /// Empty for none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

/// The operating systems Go knows, so that a lone word can be told apart from an architecture.
const OSES: &[&str] = &[
    "linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris", "illumos", "aix",
    "android", "ios", "plan9", "js", "wasip1",
];

/// The architectures containerd knows by one word (Go's names and the aliases its `Normalize`
/// reads), so that a lone word that is neither an OS nor one of these is refused, as containerd's
/// `platforms.Parse` refuses it, rather than taken as an architecture.
const ARCHES: &[&str] = &[
    "386", "i386", "amd64", "x86_64", "x86-64", "arm", "armhf", "armel", "arm64", "aarch64",
    "ppc64", "ppc64le", "mips", "mipsle", "mips64", "mips64le", "riscv64", "s390x", "loong64",
    "wasm",
];

impl Platform {
    /// The platform this process runs on, normalised.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "powerpc64" => "ppc64",
            "loongarch64" => "loong64",
            "mips64" if cfg!(target_endian = "little") => "mips64le",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: String::new(),
        }
        .normalized()
    }

    /// Parses `os/arch[/variant]` into the normal form; like containerd's `platforms.Parse`, a lone
    /// OS takes this machine's architecture and a lone architecture takes this machine's OS.
    pub fn parse(s: &str) -> Option<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) || !(1..=3).contains(&parts.len()) {
            return None;
        }
        if let [one] = parts.as_slice() {
            let host = Platform::host();
            let one = one.to_ascii_lowercase();
            // buildx's `local`: this machine's platform.
            return if one == "local" {
                Some(host)
            } else if OSES.contains(&one.as_str()) {
                Some(Platform { os: one, ..host }.normalized())
            } else if ARCHES.contains(&one.as_str()) {
                Platform::parse(&format!("{}/{one}", host.os))
            } else {
                None
            };
        }
        Some(
            Platform {
                os: parts[0].to_string(),
                architecture: parts[1].to_string(),
                variant: parts.get(2).copied().unwrap_or_default().to_string(),
            }
            .normalized(),
        )
    }

    /// containerd's `platforms.Normalize`: lowercase, common aliases to Go's names, and each
    /// architecture's default variant spelled one way (none for arm64's v8 and amd64's v1, `v7` for
    /// arm; bare version numbers get their `v`).
    pub fn normalized(&self) -> Platform {
        let mut os = self.os.to_ascii_lowercase();
        if os == "macos" {
            os = "darwin".into();
        }
        let mut architecture = self.architecture.to_ascii_lowercase();
        let mut variant = self.variant.to_ascii_lowercase();
        match architecture.as_str() {
            "i386" => {
                architecture = "386".into();
                variant.clear();
            }
            "x86_64" | "x86-64" | "amd64" => {
                architecture = "amd64".into();
                if variant == "v1" {
                    variant.clear();
                }
            }
            "aarch64" | "arm64" => {
                architecture = "arm64".into();
                match variant.as_str() {
                    "8" | "v8" | "v8.0" => variant.clear(),
                    "9" | "9.0" | "v9.0" => variant = "v9".into(),
                    _ => {}
                }
            }
            "armhf" => {
                architecture = "arm".into();
                variant = "v7".into();
            }
            "armel" => {
                architecture = "arm".into();
                variant = "v6".into();
            }
            "arm" => match variant.as_str() {
                "" | "7" => variant = "v7".into(),
                "5" | "6" | "8" => variant = format!("v{variant}"),
                _ => {}
            },
            _ => {}
        }
        Platform {
            os,
            architecture,
            variant,
        }
    }

    /// Whether `other` (an index entry's platform, as written there) names this platform: equal once
    /// both are normalised, as containerd's platform matcher decides. So an arm64 entry with or
    /// without `v8` fits arm64, an arm entry without a variant fits arm/v7, and arm64/v9 does not fit
    /// arm64.
    pub fn matches(&self, other: &Platform) -> bool {
        self.normalized() == other.normalized()
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        Platform::parse(s).unwrap().to_string()
    }

    #[test]
    fn parse_normalises_like_containerd() {
        // The spellings the builder already normalised keep their form (and graph identity).
        assert_eq!(p("linux/amd64"), "linux/amd64");
        assert_eq!(p("linux/x86_64"), "linux/amd64");
        assert_eq!(p("linux/x86-64/v1"), "linux/amd64");
        assert_eq!(p("linux/arm64"), "linux/arm64");
        assert_eq!(p("linux/arm64/v8"), "linux/arm64");
        assert_eq!(p("linux/aarch64/8"), "linux/arm64");
        assert_eq!(p("linux/arm"), "linux/arm/v7");
        assert_eq!(p("linux/armhf"), "linux/arm/v7");
        assert_eq!(p("linux/armel"), "linux/arm/v6");
        assert_eq!(p("linux/i386"), "linux/386");
        assert_eq!(p("LINUX/AMD64"), "linux/amd64");
        assert_eq!(p("linux/amd64/v3"), "linux/amd64/v3");
        // Spellings the builder's copy left as written, normalised as containerd does.
        assert_eq!(p("linux/amd64/v1"), "linux/amd64");
        assert_eq!(p("linux/arm64/v8.0"), "linux/arm64");
        assert_eq!(p("linux/arm64/9"), "linux/arm64/v9");
        assert_eq!(p("linux/arm/7"), "linux/arm/v7");
        assert_eq!(p("linux/arm/6"), "linux/arm/v6");
        assert_eq!(p("macos/arm64"), "darwin/arm64");
        assert_eq!(
            p("linux"),
            format!("linux/{}", Platform::host().architecture)
        );
        assert_eq!(Platform::parse("arm64").unwrap().os, Platform::host().os);
        assert!(Platform::parse("linux/").is_none());
        assert!(Platform::parse("a/b/c/d").is_none());
        // A lone word is an OS or an architecture containerd knows, or buildx's `local`; any
        // other was taken as an architecture (`bogus` became `linux/bogus`).
        assert_eq!(Platform::parse("local"), Some(Platform::host()));
        assert_eq!(Platform::parse("LOCAL"), Some(Platform::host()));
        assert!(Platform::parse("bogus").is_none());
        assert_eq!(p("x86_64"), format!("{}/amd64", Platform::host().os));
    }

    /// The registry's copy named an arm64 host `arm64/v8` and the builder's `arm64`; both are the
    /// normal form `arm64` now, and either spelling in an index fits it.
    #[test]
    fn arm64_is_v8_by_default_on_both_sides() {
        let arm64 = Platform::parse("linux/arm64").unwrap();
        assert_eq!(arm64.variant, "");
        let entry = |os: &str, arch: &str, variant: &str| Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.into(),
        };
        assert!(arm64.matches(&entry("linux", "arm64", "")));
        assert!(arm64.matches(&entry("linux", "arm64", "v8")));
        assert!(!arm64.matches(&entry("linux", "arm64", "v9")));
        assert!(!arm64.matches(&entry("linux", "amd64", "")));
        let arm = Platform::parse("linux/arm/v7").unwrap();
        assert!(arm.matches(&entry("linux", "arm", "")));
        assert!(!arm.matches(&entry("linux", "arm", "v6")));
        let amd64 = Platform::parse("linux/amd64").unwrap();
        assert!(amd64.matches(&entry("linux", "amd64", "v1")));
        assert!(!amd64.matches(&entry("linux", "amd64", "v3")));
        if std::env::consts::ARCH == "aarch64" {
            assert_eq!(Platform::host(), arm64);
        }
    }
}
