//! Image commands a daemonless tool needs because there is no `docker images` behind it:
//! `forge tag`, `forge push`, `forge inspect`, `forge history IMAGE`. They work on the per-user
//! store (or `--root`).

use clap::{Args, ValueEnum};
use forge_builder::events::Events;
use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::{RegistryClient, RegistryConfig};

use crate::store_cmd::{StoreArgs, no_image, normalise, stored_image};
use crate::{Failure, failed, usage};

#[derive(Args)]
pub(crate) struct TagArgs {
    /// An image in the store.
    source: String,
    /// The new name for it.
    target: String,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
pub(crate) struct PushArgs {
    /// An image in the store, pushed to the registry its name says.
    image: String,
    /// A registry (`host[:port]`) that may be reached over plain http; loopback always may.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
pub(crate) struct InspectArgs {
    /// An image in the store.
    image: String,
    #[command(flatten)]
    store: StoreArgs,
}

/// `forge tag SOURCE TARGET`: the same image under a second name.
pub(crate) fn tag(args: &TagArgs) -> Result<(), Failure> {
    let target = normalise(&args.target)?;
    if Reference::parse(&target).is_ok_and(|r| r.digest().is_some()) {
        return Err(usage(format!(
            "error: refusing to tag with a digest ({}): a tag names an image by a name and tag",
            args.target
        )));
    }
    let store = args.store.open()?;
    let (_, mut record) = stored_image(&store, &args.source)?;
    record.reference = target;
    store
        .put_image(&record)
        .map_err(|e| failed(format!("error: {e}")))
}

/// `forge push IMAGE`: the stored image to its registry, layers the store keeps with zstd
/// re-encoded with gzip first (the image's config, and so its ID, stays).
pub(crate) fn push(args: &PushArgs) -> Result<(), Failure> {
    let name = normalise(&args.image)?;
    let store = args.store.open()?;
    if store
        .get_image(&name)
        .map_err(|e| failed(format!("error: {e}")))?
        .is_none()
    {
        return Err(no_image(&name, &store));
    }
    let client = RegistryClient::new(RegistryConfig {
        insecure: args.insecure.clone(),
        ..RegistryConfig::default()
    });
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| failed(format!("error: cannot start the async runtime: {e}")))?;
    let digest = runtime
        .block_on(async {
            let (record, layers) = forge_builder::export::stored_for_push(&store, &name).await?;
            forge_builder::export::push_image(
                &store,
                &client,
                &Events::discard(),
                None,
                &record,
                &layers,
                std::slice::from_ref(&name),
                None,
            )
            .await
        })
        .map_err(|e| failed(format!("error: push {name}: {e}")))?;
    outln!("{name}: digest: {digest}");
    Ok(())
}

/// `forge inspect IMAGE`: what the store records of it, with its manifest and config documents.
pub(crate) fn inspect(args: &InspectArgs) -> Result<(), Failure> {
    let store = args.store.open()?;
    let (name, record) = stored_image(&store, &args.image)?;
    let read = |d: &forge_snapshotter::store::Digest| -> Result<serde_json::Value, Failure> {
        let bytes = store
            .read_blob(d)
            .map_err(|e| failed(format!("error: {name}: {e}")))?;
        serde_json::from_slice(&bytes).map_err(|e| failed(format!("error: {name}: blob {d}: {e}")))
    };
    let out = serde_json::json!({
        "reference": record.reference,
        "id": record.config.digest.to_string(),
        "digest": record.manifest.digest.to_string(),
        "platform": record.platform,
        "size": record.layers.iter().map(|l| l.size).sum::<u64>(),
        "manifest": read(&record.manifest.digest)?,
        "config": read(&record.config.digest)?,
    });
    outln!(
        "{}",
        serde_json::to_string_pretty(&out).expect("JSON values serialise")
    );
    Ok(())
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum HistoryFormat {
    /// Columns with a header, as `docker history` prints them.
    Table,
    /// One JSON object per line, with `docker history --format json`'s keys.
    Json,
}

#[derive(Args)]
pub(crate) struct ImageHistoryArgs {
    /// An image in the store: list the steps that made it, newest first, as `docker history` does
    /// (IMAGE, CREATED, CREATED BY, SIZE, COMMENT; SIZE is the layer as stored, compressed).
    /// Without it, the runs of the pipeline of -f are listed.
    #[arg(conflicts_with = "file")]
    image: Option<String>,
    #[command(flatten)]
    pipeline: crate::run_cmd::HistoryArgs,
    /// Show the whole image ID and step (image history only).
    #[arg(long, requires = "image")]
    no_trunc: bool,
    /// How an image's history is printed.
    #[arg(long, value_enum, requires = "image")]
    format: Option<HistoryFormat>,
}

/// `forge history`: an image's history with IMAGE, else the pipeline's runs.
pub(crate) fn history(args: &ImageHistoryArgs) -> Result<(), Failure> {
    let Some(image) = &args.image else {
        return crate::run_cmd::history(&args.pipeline);
    };
    let store = match &args.pipeline.root {
        Some(root) => forge_snapshotter::store::Store::open(root),
        None => forge_snapshotter::store::Store::open_default(),
    }
    .map_err(|e| failed(format!("error: cannot open the store: {e}")))?;
    let (name, record) = stored_image(&store, image)?;
    let bytes = store
        .read_blob(&record.config.digest)
        .map_err(|e| failed(format!("error: {name}: {e}")))?;
    let config: forge_builder::export::config::ConfigFile = serde_json::from_slice(&bytes)
        .map_err(|e| {
            failed(format!(
                "error: {name}: config {}: {e}",
                record.config.digest
            ))
        })?;
    let sizes: Vec<u64> = record.layers.iter().map(|l| l.size).collect();
    let lines = config.history_lines(&sizes);
    let id = record.config.digest.to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let trunc = !args.no_trunc;
    let rows: Vec<[String; 6]> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let shown_id = match (i, trunc) {
                (0, true) => id.trim_start_matches("sha256:").chars().take(12).collect(),
                (0, false) => id.clone(),
                _ => "<missing>".to_string(),
            };
            let created = l
                .created
                .as_deref()
                .and_then(forge_builder::export::parse_rfc3339);
            let since = created.map_or("N/A".to_string(), |(t, _)| {
                format!("{} ago", human_duration(now - t))
            });
            let by = l.created_by.replace('\t', " ");
            let by = if trunc { ellipsis(&by, 45) } else { by };
            [
                shown_id,
                since,
                by,
                human_size(l.layer_size.unwrap_or(0)),
                l.comment.clone(),
                l.created.clone().unwrap_or_default(),
            ]
        })
        .collect();
    if args.format == Some(HistoryFormat::Json) {
        for [id, since, by, size, comment, at] in rows {
            let line = serde_json::json!({
                "Comment": comment,
                "CreatedAt": at,
                "CreatedBy": by,
                "CreatedSince": since,
                "ID": id,
                "Size": size,
            });
            outln!("{line}");
        }
        return Ok(());
    }
    let header = ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let print = |cells: [&str; 5]| {
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < cells.len() {
                let pad = widths[i] + 3 - cell.chars().count();
                line.push_str(&" ".repeat(pad));
            }
        }
        outln!("{}", line.trim_end());
    };
    print(header);
    for r in &rows {
        print([&r[0], &r[1], &r[2], &r[3], &r[4]]);
    }
    Ok(())
}

/// `s` cut to `max` characters, the last one an ellipsis, as docker cuts its columns.
fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// A size as docker prints it: decimal units, three significant digits (`0B`, `512B`, `1.23kB`,
/// `4.26MB`).
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    let mut text = format!("{value:.digits$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text}{}", UNITS[unit])
}

/// How long ago, in docker's words (`Less than a second`, `About a minute`, `3 hours`, `2 weeks`).
fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let minutes = secs / 60;
    // docker rounds hours to the nearest one.
    let hours = (secs + 1800) / 3600;
    match secs {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        _ if minutes == 1 => "About a minute".into(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", hours / 24 / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_as_docker_prints_them() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1234), "1.23kB");
        assert_eq!(human_size(4_261_222), "4.26MB");
        assert_eq!(human_size(15_000_000), "15MB");
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(45), "45 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(3 * 3600), "3 hours");
        assert_eq!(human_duration(20 * 86400), "2 weeks");
        assert_eq!(ellipsis("abcdef", 4), "abc…");
        assert_eq!(ellipsis("abc", 4), "abc");
    }
}
