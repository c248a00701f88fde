//! The byte encoding a vertex's identity is hashed from. It is a format: changing it changes every
//! digest (and so every cache key), so it carries a version and changes only on purpose.
//!
//! # Specification (version `forge.graph.v1`)
//!
//! Primitive values:
//! - `str`/`bytes`: u64 little-endian byte length, then the UTF-8 bytes;
//! - `u64`/`u32`: 8 bytes little-endian (u32 widened);
//! - `bool`: one byte, 0 or 1;
//! - `option<T>`: one byte 0 (absent) or 1 followed by `T`;
//! - `list<T>`: u64 little-endian element count, then each element;
//! - `input`: `option<digest>` where digest is the referenced vertex's 32 raw blake3 bytes and
//!   absent means scratch (the empty filesystem);
//! - `enum`: one byte naming the variant (values below), then the variant's fields.
//!
//! A field is written as its tag byte then its value; a struct is its fields in the order listed,
//! preceded by a u64 count of the fields, so that adding a field can never alias an old encoding.
//!
//! A vertex is: `str "forge.graph.v1"`, then the op enum:
//! - `0x01` Source, then the source enum:
//!   `0x01` Scratch {} ; `0x02` Image {1 reference: str, 2 platform} ;
//!   `0x03` Local {1 name: str} ; its include and exclude patterns are left out: they are the
//!   paths the whole build reads and the `.dockerignore` rules, and what each user of the context
//!   reads is keyed by its own content digest (the solver's `cache_inputs`), so a COPY's key does
//!   not move when another COPY, another `--target` or another Dockerfile reads other paths
//!   (BuildKit keys a COPY by the checksum of what it reads). The executor finds a context by
//!   its name alone, and a build has one source per name ;
//!   `0x04` Http {1 url: str, 2 filename: str, 3 checksum: option<str>} ;
//!   `0x05` Git {1 remote: str, 2 reference: str, 3 subdir: str, 4 keep_git_dir: bool,
//!   5 checksum: option<str>}
//! - `0x02` Exec {1 args: list<str>, 2 env: list<str>, 3 cwd: str, 4 user: str,
//!   5 network: enum (1 default, 2 none, 3 host), 6 security: enum (1 sandbox, 2 insecure),
//!   7 platform, 8 mounts: list<mount>, 9 test: test_step}, where field 9 is written only for a
//!   test step (the struct then has 9 fields): an ordinary exec encodes as it did before the field
//!   existed, and keeps its identity
//!   - test_step: {1 artifacts: list<str>}
//!   - mount: {1 target: str, 2 kind: enum} with kinds
//!     `0x01` Bind {1 input, 2 source_path: str, 3 readonly: bool, 4 output: bool} ;
//!     `0x02` Cache {1 id: str, 2 sharing: enum (1 shared, 2 private, 3 locked), 3 input,
//!     4 source_path: str, 5 readonly: bool} ;
//!     `0x03` Tmpfs {1 size_bytes: u64, 2 readonly: bool}, field 2 written only when true (a
//!     writable tmpfs encodes as it did before the field existed) ;
//!     `0x04` Secret {1 id: str, 2 env: option<str>, 3 required: bool, 4 uid: u32, 5 gid: u32, 6 mode: u32} ;
//!     `0x05` Ssh {1 id: str, 2 required: bool, 3 uid: u32, 4 gid: u32, 5 mode: u32}
//! - `0x03` File {1 base: input, 2 platform, 3 actions: list<action>} with actions
//!   `0x01` Copy {1 from: input, 2 src: str, 3 dest: str, 4 owner: option<str>, 5 mode: option<chmod>,
//!   6 follow_symlinks, 7 copy_dir_contents_only, 8 include_patterns: list<str>,
//!   9 exclude_patterns: list<str>, 10 required_paths: list<str>, 11 attempt_unpack,
//!   12 create_dest_path, 13 allow_wildcard, 14 allow_empty_wildcard (booleans)} ;
//!   `0x02` Mkdir {1 path: str, 2 mode: u32, 3 make_parents: bool, 4 owner: option<str>} ;
//!   `0x03` Mkfile {1 path: str, 2 mode: u32, 3 data: bytes, 4 owner: option<str>} ;
//!   `0x04` Rm {1 path: str, 2 allow_not_found: bool, 3 allow_wildcard: bool} ;
//!   `0x05` Symlink {1 target: str, 2 link: str} ;
//!   chmod: enum `0x01` octal {1 mode: u32}, `0x02` symbolic {1 expr: str}
//! - `0x04` Merge {1 inputs: list<input>}
//! - platform: {1 os: str, 2 architecture: str, 3 variant: str}

use super::{
    CacheSharing, Chmod, CopyOptions, ExecOp, FileAction, FileOp, Mount, MountKind, NetworkMode,
    NodeRef, Op, Platform, SecurityMode, SourceOp, VertexId,
};

const VERSION: &str = "forge.graph.v1";

/// Appends the primitive values of the specification above to a buffer.
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    pub fn bool(&mut self, b: bool) {
        self.buf.push(u8::from(b));
    }

    pub fn byte(&mut self, b: u8) {
        self.buf.push(b);
    }

    /// Starts a struct of `n` fields.
    pub fn fields(&mut self, n: u64) {
        self.u64(n);
    }

    /// Writes a field's tag; its value follows.
    pub fn tag(&mut self, t: u8) {
        self.buf.push(t);
    }

    pub fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.byte(0),
            Some(s) => {
                self.byte(1);
                self.str(s);
            }
        }
    }

    pub fn strs(&mut self, list: &[String]) {
        self.u64(list.len() as u64);
        for s in list {
            self.str(s);
        }
    }

    pub fn digest(&mut self, id: Option<VertexId>) {
        match id {
            None => self.byte(0),
            Some(id) => {
                self.byte(1);
                self.buf.extend_from_slice(&id.0);
            }
        }
    }
}

/// The identity of `op`, given the identities of the vertices it references.
pub(super) fn vertex_id(op: &Op, id_of: &dyn Fn(NodeRef) -> VertexId) -> VertexId {
    let mut e = Encoder::new();
    encode_op(&mut e, op, id_of);
    VertexId(*blake3::hash(&e.into_bytes()).as_bytes())
}

fn encode_op(e: &mut Encoder, op: &Op, id_of: &dyn Fn(NodeRef) -> VertexId) {
    let input = |e: &mut Encoder, r: Option<NodeRef>| e.digest(r.map(id_of));
    e.str(VERSION);
    match op {
        Op::Source(s) => {
            e.byte(0x01);
            source(e, s);
        }
        Op::Exec(x) => {
            e.byte(0x02);
            exec(e, x, &input);
        }
        Op::File(f) => {
            e.byte(0x03);
            file(e, f, &input);
        }
        Op::Merge(m) => {
            e.byte(0x04);
            e.fields(1);
            e.tag(1);
            e.u64(m.inputs.len() as u64);
            for i in &m.inputs {
                input(e, *i);
            }
        }
    }
}

fn platform(e: &mut Encoder, p: &Platform) {
    e.fields(3);
    e.tag(1);
    e.str(&p.os);
    e.tag(2);
    e.str(&p.architecture);
    e.tag(3);
    e.str(&p.variant);
}

fn source(e: &mut Encoder, s: &SourceOp) {
    match s {
        SourceOp::Scratch => {
            e.byte(0x01);
            e.fields(0);
        }
        SourceOp::Image {
            reference,
            platform: p,
        } => {
            e.byte(0x02);
            e.fields(2);
            e.tag(1);
            e.str(reference);
            e.tag(2);
            platform(e, p);
        }
        SourceOp::Local { name, .. } => {
            // The patterns are left out of the identity (see the module's documentation).
            e.byte(0x03);
            e.fields(1);
            e.tag(1);
            e.str(name);
        }
        SourceOp::Http {
            url,
            filename,
            checksum,
        } => {
            e.byte(0x04);
            e.fields(3);
            e.tag(1);
            e.str(url);
            e.tag(2);
            e.str(filename);
            e.tag(3);
            e.opt_str(checksum.as_deref());
        }
        SourceOp::Git {
            remote,
            reference,
            subdir,
            keep_git_dir,
            checksum,
        } => {
            e.byte(0x05);
            e.fields(5);
            e.tag(1);
            e.str(remote);
            e.tag(2);
            e.str(reference);
            e.tag(3);
            e.str(subdir);
            e.tag(4);
            e.bool(*keep_git_dir);
            e.tag(5);
            e.opt_str(checksum.as_deref());
        }
    }
}

type InputFn<'a> = dyn Fn(&mut Encoder, Option<NodeRef>) + 'a;

fn exec(e: &mut Encoder, x: &ExecOp, input: &InputFn<'_>) {
    e.fields(
        8 + u64::from(x.test.is_some())
            + u64::from(!x.extra_hosts.is_empty())
            + u64::from(!x.ulimits.is_empty())
            + u64::from(x.shm_size.is_some()),
    );
    e.tag(1);
    e.strs(&x.args);
    e.tag(2);
    e.strs(&x.env);
    e.tag(3);
    e.str(&x.cwd);
    e.tag(4);
    e.str(&x.user);
    e.tag(5);
    e.byte(match x.network {
        NetworkMode::Default => 1,
        NetworkMode::None => 2,
        NetworkMode::Host => 3,
    });
    e.tag(6);
    e.byte(match x.security {
        SecurityMode::Sandbox => 1,
        SecurityMode::Insecure => 2,
    });
    e.tag(7);
    platform(e, &x.platform);
    e.tag(8);
    e.u64(x.mounts.len() as u64);
    for m in &x.mounts {
        mount(e, m, input);
    }
    if let Some(t) = &x.test {
        e.tag(9);
        e.fields(1);
        e.tag(1);
        e.strs(&t.artifacts);
    }
    if !x.extra_hosts.is_empty() {
        e.tag(10);
        e.strs(&x.extra_hosts);
    }
    if !x.ulimits.is_empty() {
        e.tag(11);
        e.strs(&x.ulimits);
    }
    if let Some(size) = x.shm_size {
        e.tag(12);
        e.u64(size);
    }
}

fn mount(e: &mut Encoder, m: &Mount, input: &InputFn<'_>) {
    e.fields(2);
    e.tag(1);
    e.str(&m.target);
    e.tag(2);
    match &m.kind {
        MountKind::Bind {
            input: i,
            source_path,
            readonly,
            output,
        } => {
            e.byte(0x01);
            e.fields(4);
            e.tag(1);
            input(e, *i);
            e.tag(2);
            e.str(source_path);
            e.tag(3);
            e.bool(*readonly);
            e.tag(4);
            e.bool(*output);
        }
        MountKind::Cache {
            id,
            sharing,
            input: i,
            source_path,
            readonly,
        } => {
            e.byte(0x02);
            e.fields(5);
            e.tag(1);
            e.str(id);
            e.tag(2);
            e.byte(match sharing {
                CacheSharing::Shared => 1,
                CacheSharing::Private => 2,
                CacheSharing::Locked => 3,
            });
            e.tag(3);
            input(e, *i);
            e.tag(4);
            e.str(source_path);
            e.tag(5);
            e.bool(*readonly);
        }
        MountKind::Tmpfs {
            size_bytes,
            readonly,
        } => {
            e.byte(0x03);
            e.fields(if *readonly { 2 } else { 1 });
            e.tag(1);
            e.u64(*size_bytes);
            if *readonly {
                e.tag(2);
                e.bool(true);
            }
        }
        MountKind::Secret {
            id,
            env,
            required,
            uid,
            gid,
            mode,
        } => {
            e.byte(0x04);
            e.fields(6);
            e.tag(1);
            e.str(id);
            e.tag(2);
            e.opt_str(env.as_deref());
            e.tag(3);
            e.bool(*required);
            ids(e, 4, *uid, *gid, *mode);
        }
        MountKind::Ssh {
            id,
            required,
            uid,
            gid,
            mode,
        } => {
            e.byte(0x05);
            e.fields(5);
            e.tag(1);
            e.str(id);
            e.tag(2);
            e.bool(*required);
            ids(e, 3, *uid, *gid, *mode);
        }
    }
}

fn ids(e: &mut Encoder, first_tag: u8, uid: u32, gid: u32, mode: u32) {
    for (i, v) in [uid, gid, mode].into_iter().enumerate() {
        e.tag(first_tag + i as u8);
        e.u64(u64::from(v));
    }
}

fn file(e: &mut Encoder, f: &FileOp, input: &InputFn<'_>) {
    e.fields(3);
    e.tag(1);
    input(e, f.base);
    e.tag(2);
    platform(e, &f.platform);
    e.tag(3);
    e.u64(f.actions.len() as u64);
    for a in &f.actions {
        action(e, a, input);
    }
}

fn action(e: &mut Encoder, a: &FileAction, input: &InputFn<'_>) {
    match a {
        FileAction::Copy {
            from,
            src,
            dest,
            options,
        } => {
            e.byte(0x01);
            e.fields(14);
            e.tag(1);
            input(e, *from);
            e.tag(2);
            e.str(src);
            e.tag(3);
            e.str(dest);
            copy_options(e, options);
        }
        FileAction::Mkdir {
            path,
            mode,
            make_parents,
            owner,
        } => {
            e.byte(0x02);
            e.fields(4);
            e.tag(1);
            e.str(path);
            e.tag(2);
            e.u64(u64::from(*mode));
            e.tag(3);
            e.bool(*make_parents);
            e.tag(4);
            e.opt_str(owner.as_deref());
        }
        FileAction::Mkfile {
            path,
            mode,
            data,
            owner,
        } => {
            e.byte(0x03);
            e.fields(4);
            e.tag(1);
            e.str(path);
            e.tag(2);
            e.u64(u64::from(*mode));
            e.tag(3);
            e.bytes(data.as_bytes());
            e.tag(4);
            e.opt_str(owner.as_deref());
        }
        FileAction::Rm {
            path,
            allow_not_found,
            allow_wildcard,
        } => {
            e.byte(0x04);
            e.fields(3);
            e.tag(1);
            e.str(path);
            e.tag(2);
            e.bool(*allow_not_found);
            e.tag(3);
            e.bool(*allow_wildcard);
        }
        FileAction::Symlink { target, link } => {
            e.byte(0x05);
            e.fields(2);
            e.tag(1);
            e.str(target);
            e.tag(2);
            e.str(link);
        }
    }
}

fn copy_options(e: &mut Encoder, o: &CopyOptions) {
    e.tag(4);
    e.opt_str(o.owner.as_deref());
    e.tag(5);
    match &o.mode {
        None => e.byte(0),
        Some(m) => {
            e.byte(1);
            match m {
                Chmod::Octal(v) => {
                    e.byte(0x01);
                    e.fields(1);
                    e.tag(1);
                    e.u64(u64::from(*v));
                }
                Chmod::Symbolic(s) => {
                    e.byte(0x02);
                    e.fields(1);
                    e.tag(1);
                    e.str(s);
                }
            }
        }
    }
    let flags = [(6, o.follow_symlinks), (7, o.copy_dir_contents_only)];
    for (t, b) in flags {
        e.tag(t);
        e.bool(b);
    }
    e.tag(8);
    e.strs(&o.include_patterns);
    e.tag(9);
    e.strs(&o.exclude_patterns);
    e.tag(10);
    e.strs(&o.required_paths);
    let flags = [
        (11, o.attempt_unpack),
        (12, o.create_dest_path),
        (13, o.allow_wildcard),
        (14, o.allow_empty_wildcard),
    ];
    for (t, b) in flags {
        e.tag(t);
        e.bool(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An exec of `args` with no mounts, a test step when `artifacts` is given.
    fn exec_op(args: &[&str], artifacts: Option<&[&str]>) -> Op {
        Op::Exec(ExecOp {
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![],
            cwd: "/".into(),
            user: String::new(),
            network: NetworkMode::Default,
            security: SecurityMode::Sandbox,
            platform: Platform::parse("linux/amd64").unwrap(),
            mounts: vec![],
            test: artifacts.map(|a| super::super::TestStep {
                artifacts: a.iter().map(|p| p.to_string()).collect(),
            }),
            extra_hosts: Vec::new(),
            ulimits: Vec::new(),
            shm_size: None,
        })
    }

    #[test]
    fn strings_are_length_prefixed_so_concatenations_differ() {
        let id = |args: Vec<&str>| vertex_id(&exec_op(&args, None), &|_| unreachable!("no inputs"));
        assert_ne!(id(vec!["ab", "c"]), id(vec!["a", "bc"]));
        assert_ne!(id(vec!["abc"]), id(vec!["ab", "c"]));
        assert_eq!(id(vec!["a"]), id(vec!["a"]));
    }

    /// The platform type moved to the snapshotter and normalises as containerd does; the spellings
    /// the builder accepted before must still hash the fields it wrote (arm64's v8 as no variant).
    #[test]
    fn platform_spellings_keep_their_encoding() {
        let bytes = |p: &Platform| {
            let mut e = Encoder::new();
            platform(&mut e, p);
            e.into_bytes()
        };
        for (spelling, (os, architecture, variant)) in [
            ("linux/amd64", ("linux", "amd64", "")),
            ("linux/x86_64", ("linux", "amd64", "")),
            ("linux/arm64", ("linux", "arm64", "")),
            ("linux/arm64/v8", ("linux", "arm64", "")),
            ("linux/aarch64", ("linux", "arm64", "")),
            ("linux/arm", ("linux", "arm", "v7")),
            ("linux/armhf", ("linux", "arm", "v7")),
            ("linux/arm/v6", ("linux", "arm", "v6")),
            ("linux/riscv64", ("linux", "riscv64", "")),
        ] {
            let written = Platform {
                os: os.into(),
                architecture: architecture.into(),
                variant: variant.into(),
            };
            let parsed = Platform::parse(spelling).unwrap();
            assert_eq!(bytes(&parsed), bytes(&written), "{spelling}");
        }
    }

    #[test]
    fn a_test_step_has_its_own_identity_and_an_ordinary_exec_keeps_its_own() {
        let op = |artifacts: Option<&[&str]>| exec_op(&["make", "test"], artifacts);
        let id = |o: &Op| vertex_id(o, &|_| unreachable!("no inputs"));
        let plain = id(&op(None));
        let no_artifacts = id(&op(Some(&[])));
        let reports = id(&op(Some(&["/reports"])));
        assert_ne!(plain, no_artifacts);
        assert_ne!(no_artifacts, reports);
        assert_ne!(plain, reports);

        // Without a test step the encoding is the 8-field struct it always was.
        let mut e = Encoder::new();
        encode_op(&mut e, &op(None), &|_| unreachable!());
        let bytes = e.into_bytes();
        let exec_start = 8 + VERSION.len() + 1;
        assert_eq!(bytes[exec_start - 1], 0x02);
        assert_eq!(bytes[exec_start..exec_start + 8], 8u64.to_le_bytes());
    }

    #[test]
    fn primitive_layout_matches_the_specification() {
        let mut e = Encoder::new();
        e.str("ab");
        e.opt_str(None);
        e.bool(true);
        assert_eq!(
            e.into_bytes(),
            vec![2, 0, 0, 0, 0, 0, 0, 0, b'a', b'b', 0, 1]
        );
    }
}
