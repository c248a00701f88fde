//! The hostile layer corpus: each case is one or more tars written byte by byte (the tar crate's
//! builder refuses to make most of them) and the outcome unpack must give. The committed files in
//! testdata/hostile/ are this generator's output (`cargo run --example make_hostile`), and a test
//! checks that they still are. Escapes aim at `../outside` (a sentinel directory beside the root)
//! or at the absolute ABS_TARGET, so that a broken unpacker is caught writing there.

use forge_snapshotter::unpack::Refusal;

/// An absolute directory that absolute-symlink cases point at; tests check nothing lands there.
pub const ABS_TARGET: &str = "/tmp/forge-hostile-abs";

/// What applying a case must give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Refused, naming `entry`, for `reason`.
    Refused {
        entry: &'static str,
        reason: Refusal,
    },
    /// An I/O-level failure naming `entry` (for example a truncated archive).
    Failed { entry: &'static str },
    /// Applied; the named check then looks at the result.
    Applied,
}

pub struct Case {
    pub name: &'static str,
    pub layers: Vec<Vec<u8>>,
    pub expect: Expect,
}

const REG: u8 = b'0';
const LNK: u8 = b'1';
const SYM: u8 = b'2';
const CHR: u8 = b'3';
const DIR: u8 = b'5';

fn octal(field: &mut [u8], v: u64) {
    let w = field.len() - 1;
    let s = format!("{v:0w$o}");
    field[..w].copy_from_slice(&s.as_bytes()[s.len() - w..]);
}

/// A ustar header with the name bytes placed raw (truncated to 100: long names use L or x).
fn header(name: &[u8], typeflag: u8, size: u64, link: &[u8], mode: u32) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_600_000_000);
    h[156] = typeflag;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    if typeflag == CHR {
        octal(&mut h[329..337], 1);
        octal(&mut h[337..345], 3);
    }
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

struct Tar(Vec<u8>);

impl Tar {
    fn new() -> Self {
        Tar(Vec::new())
    }
    fn raw(
        &mut self,
        name: &[u8],
        typeflag: u8,
        link: &[u8],
        data: &[u8],
        claimed: u64,
        mode: u32,
    ) -> &mut Self {
        self.0
            .extend_from_slice(&header(name, typeflag, claimed, link, mode));
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    fn file(&mut self, name: &str, data: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            REG,
            b"",
            data.as_bytes(),
            data.len() as u64,
            0o644,
        )
    }
    fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(name.as_bytes(), DIR, b"", b"", 0, 0o755)
    }
    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name.as_bytes(), SYM, target.as_bytes(), b"", 0, 0o777)
    }
    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name.as_bytes(), LNK, target.as_bytes(), b"", 0, 0o644)
    }
    /// A GNU `L` long-name record for the next entry.
    fn gnu_longname(&mut self, name: &[u8]) -> &mut Self {
        let mut data = name.to_vec();
        data.push(0);
        let len = data.len() as u64;
        self.raw(b"././@LongLink", b'L', b"", &data, len, 0o644)
    }
    /// A PAX extended header with the given records for the next entry.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let rest = k.len() + v.len() + 3;
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            body.extend_from_slice(len.to_string().as_bytes());
            body.push(b' ');
            body.extend_from_slice(k.as_bytes());
            body.push(b'=');
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        let len = body.len() as u64;
        self.raw(b"PaxHeaders/x", b'x', b"", &body, len, 0o644)
    }
    fn end(&mut self) -> Vec<u8> {
        let mut v = std::mem::take(&mut self.0);
        v.extend(std::iter::repeat_n(0u8, 1024));
        v
    }
}

fn refused(entry: &'static str, reason: Refusal) -> Expect {
    Expect::Refused { entry, reason }
}

/// Every case, in a stable order.
pub fn cases() -> Vec<Case> {
    let long_escape = format!("{}/../../outside/evil", "a".repeat(120));
    let long_escape: &'static str = Box::leak(long_escape.into_boxed_str());
    let abs_evil: &'static str = Box::leak(format!("{ABS_TARGET}/evil").into_boxed_str());
    vec![
        Case {
            name: "dotdot",
            layers: vec![Tar::new().file("../outside/evil", "x").end()],
            expect: refused("../outside/evil", Refusal::ParentComponent),
        },
        Case {
            name: "dotdot-inner",
            layers: vec![Tar::new().dir("a/").file("a/../../outside/evil", "x").end()],
            expect: refused("a/../../outside/evil", Refusal::ParentComponent),
        },
        Case {
            name: "absolute-path",
            layers: vec![Tar::new().file(abs_evil, "x").end()],
            expect: refused(abs_evil, Refusal::Absolute),
        },
        Case {
            name: "symlink-relative-escape",
            layers: vec![
                Tar::new()
                    .symlink("link", "../outside")
                    .file("link/evil", "x")
                    .end(),
            ],
            expect: refused("link/evil", Refusal::EscapesThroughSymlink),
        },
        Case {
            name: "symlink-absolute-escape",
            layers: vec![
                Tar::new()
                    .symlink("abs", ABS_TARGET)
                    .file("abs/evil", "x")
                    .end(),
            ],
            expect: refused("abs/evil", Refusal::EscapesThroughSymlink),
        },
        Case {
            name: "symlink-chain-escape",
            layers: vec![
                Tar::new()
                    .symlink("a", "b")
                    .symlink("b", "c/../../outside")
                    .dir("c/")
                    .file("a/evil", "x")
                    .end(),
            ],
            expect: refused("a/evil", Refusal::EscapesThroughSymlink),
        },
        Case {
            name: "symlink-dir-entry-escape",
            layers: vec![Tar::new().symlink("d", "../outside").dir("d/sub/").end()],
            expect: refused("d/sub/", Refusal::EscapesThroughSymlink),
        },
        Case {
            name: "symlink-from-lower-layer",
            layers: vec![
                Tar::new().symlink("link", "../outside").end(),
                Tar::new().file("link/evil", "x").end(),
            ],
            expect: refused("link/evil", Refusal::EscapesThroughSymlink),
        },
        Case {
            name: "dir-replaced-by-symlink",
            layers: vec![
                Tar::new().dir("d/").end(),
                Tar::new()
                    .symlink("d", "../outside")
                    .file("d/evil", "x")
                    .end(),
            ],
            expect: refused("d/evil", Refusal::EscapesThroughSymlink),
        },
        Case {
            name: "symlink-loop",
            layers: vec![
                Tar::new()
                    .symlink("a", "b")
                    .symlink("b", "a")
                    .file("a/x", "x")
                    .end(),
            ],
            expect: refused("a/x", Refusal::SymlinkLoop),
        },
        Case {
            name: "whiteout-through-symlink",
            layers: vec![
                Tar::new()
                    .symlink("l", "../outside")
                    .file("l/.wh.sentinel", "")
                    .end(),
            ],
            expect: refused("l/.wh.sentinel", Refusal::EscapesThroughSymlink),
        },
        Case {
            name: "opaque-through-symlink",
            layers: vec![
                Tar::new()
                    .symlink("l", "../outside")
                    .file("l/.wh..wh..opq", "")
                    .end(),
            ],
            expect: refused("l/.wh..wh..opq", Refusal::EscapesThroughSymlink),
        },
        Case {
            name: "hardlink-dotdot",
            layers: vec![Tar::new().hardlink("evil", "../outside/sentinel").end()],
            expect: refused(
                "evil",
                Refusal::HardlinkOutside("../outside/sentinel".into()),
            ),
        },
        Case {
            name: "hardlink-absolute",
            layers: vec![Tar::new().hardlink("evil", "/etc/passwd").end()],
            expect: refused("evil", Refusal::HardlinkOutside("/etc/passwd".into())),
        },
        Case {
            name: "hardlink-through-symlink",
            layers: vec![
                Tar::new()
                    .symlink("l", "../outside")
                    .hardlink("evil", "l/sentinel")
                    .end(),
            ],
            expect: refused("evil", Refusal::HardlinkOutside("l/sentinel".into())),
        },
        Case {
            name: "hardlink-to-escaping-symlink",
            layers: vec![
                Tar::new()
                    .symlink("s", "../outside/sentinel")
                    .hardlink("h", "s")
                    .end(),
            ],
            expect: refused("h", Refusal::HardlinkToEscapingSymlink("s".into())),
        },
        Case {
            name: "hardlink-missing-target",
            layers: vec![Tar::new().hardlink("h", "nowhere").end()],
            expect: refused("h", Refusal::HardlinkTargetMissing("nowhere".into())),
        },
        Case {
            name: "gnu-longname-escape",
            layers: vec![
                Tar::new()
                    .gnu_longname(long_escape.as_bytes())
                    .file("benign", "x")
                    .end(),
            ],
            expect: refused(long_escape, Refusal::ParentComponent),
        },
        Case {
            name: "pax-path-escape",
            layers: vec![
                Tar::new()
                    .pax(&[("path", b"../outside/evil")])
                    .file("benign", "x")
                    .end(),
            ],
            expect: refused("../outside/evil", Refusal::ParentComponent),
        },
        Case {
            name: "pax-path-nul",
            layers: vec![
                Tar::new()
                    .pax(&[("path", b"a\0b")])
                    .file("benign", "x")
                    .end(),
            ],
            expect: refused("a\0b", Refusal::NulByte),
        },
        Case {
            name: "pax-linkpath-escape",
            layers: vec![
                Tar::new()
                    .pax(&[("linkpath", b"../outside/sentinel")])
                    .hardlink("evil", "benign")
                    .end(),
            ],
            expect: refused(
                "evil",
                Refusal::HardlinkOutside("../outside/sentinel".into()),
            ),
        },
        Case {
            name: "root-as-symlink",
            layers: vec![Tar::new().symlink("./", "../outside").end()],
            expect: refused("./", Refusal::RootNotDirectory),
        },
        Case {
            name: "size-header-lie",
            layers: vec![{
                let mut t = Tar::new();
                t.raw(b"big", REG, b"", b"only ten b", 1 << 30, 0o644);
                // No end-of-archive: the archive simply stops, as a truncated download would.
                t.0
            }],
            expect: Expect::Failed { entry: "big" },
        },
        Case {
            name: "duplicate-symlink-then-file",
            layers: vec![
                Tar::new()
                    .symlink("f", "../outside/sentinel")
                    .file("f", "replaced")
                    .end(),
            ],
            expect: Expect::Applied,
        },
        Case {
            name: "duplicate-files",
            layers: vec![Tar::new().file("dup", "one").file("dup", "two").end()],
            expect: Expect::Applied,
        },
        Case {
            name: "device-node",
            layers: vec![{
                let mut t = Tar::new();
                t.dir("dev/");
                t.raw(b"dev/null", CHR, b"", b"", 0, 0o666);
                t.end()
            }],
            expect: Expect::Applied,
        },
    ]
}
