//! Webhook intake for `forge serve`: checks who sent a delivery, names it for
//! replay refusal, and turns forge and registry payloads into build triggers.
//!
//! Everything here is a pure function over header values and body bytes: no
//! I/O, no clock, no async. The caller owns HTTP, time and the replay store.

#![warn(missing_docs)]

mod keyword;
mod parse;
mod registry;
mod verify;

pub use keyword::{has_keyword, skips_ci};
pub use parse::parse;
pub use registry::parse_registry;
pub use verify::{delivery_id, verify};

/// The source-code forges whose webhooks this crate understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    /// github.com and GitHub Enterprise Server.
    GitHub,
    /// gitlab.com and self-managed GitLab.
    GitLab,
    /// Gitea (and Forgejo, which keeps Gitea's headers).
    Gitea,
    /// Gitee (码云).
    Gitee,
}

impl Forge {
    /// Maps the URL path segment ("github", "gitlab", "gitea", "gitee") to a forge.
    pub fn from_path_segment(s: &str) -> Option<Forge> {
        match s {
            "github" => Some(Forge::GitHub),
            "gitlab" => Some(Forge::GitLab),
            "gitea" => Some(Forge::Gitea),
            "gitee" => Some(Forge::Gitee),
            _ => None,
        }
    }

    /// The lowercase name used in path segments and delivery-id prefixes.
    pub fn name(self) -> &'static str {
        match self {
            Forge::GitHub => "github",
            Forge::GitLab => "gitlab",
            Forge::Gitea => "gitea",
            Forge::Gitee => "gitee",
        }
    }
}

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    /// No signature/token header at all (-> HTTP 401).
    #[error("the request carries no webhook signature or token")]
    Unsigned,
    /// Signature or token present but wrong (-> HTTP 401).
    #[error("the webhook signature or token does not match the secret")]
    BadSignature,
    /// Body is not the JSON this event should be (-> HTTP 400); the message names what is missing.
    #[error("malformed webhook payload: {0}")]
    BadPayload(String),
}

/// What a verified forge delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A push to a branch.
    Push(Push),
    /// A new tag pushed.
    Tag(TagPush),
    /// A ping or test delivery: answer 200, start nothing.
    Ping,
    /// Any other event (issue, merge request, branch or tag deletion...): 200, start nothing; the string names it.
    Ignored(String),
}

/// A push that moved a branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// Branch name without `refs/heads/`.
    pub branch: String,
    /// Full commit id the branch now points at.
    pub after: String,
    /// Commits as the payload lists them (may be empty, may be truncated by the forge).
    pub commits: Vec<Commit>,
    /// Clone URLs of the repository as the payload gives them (http and ssh), for information.
    pub clone_urls: Vec<String>,
}

/// One commit of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Full commit id.
    pub id: String,
    /// Full commit message.
    pub message: String,
}

/// A newly pushed tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagPush {
    /// Tag name without `refs/tags/`.
    pub tag: String,
    /// The commit the tag points at (peeled when the payload says which commit an annotated tag names).
    pub commit: String,
}

/// One manifest pushed to a registry, from a Docker Hub webhook or a Distribution notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryPush {
    /// Repository path as the registry sent it, without host (e.g. "library/debian").
    pub repository: String,
    /// Registry host when known ("docker.io" for Docker Hub, `request.host` for Distribution).
    pub host: Option<String>,
    /// Tag, when the push was by tag and the payload says so.
    pub tag: Option<String>,
    /// Manifest digest, when the payload gives it (Distribution does, Docker Hub does not).
    pub digest: Option<String>,
}
