//! TEMPORARY plain progress printer (replaced by progress.rs when it lands).

use forge_builder::build::BuildEvent;
use forge_builder::solver::Event;
use tokio::sync::mpsc::UnboundedReceiver;

pub async fn print(mut rx: UnboundedReceiver<BuildEvent>, quiet: bool, json: bool) {
    while let Some(ev) = rx.recv().await {
        if quiet {
            continue;
        }
        let line = match &ev {
            BuildEvent::Solver(Event::Cached { vertex, description, .. }) => {
                format!("#{} {description} CACHED", vertex.0)
            }
            BuildEvent::Solver(Event::Started { vertex, description }) => {
                format!("#{} {description}", vertex.0)
            }
            BuildEvent::Solver(Event::Done { vertex, duration, .. }) => {
                format!("#{} DONE {:.1}s", vertex.0, duration.as_secs_f64())
            }
            BuildEvent::Solver(Event::Failed { vertex, error, .. }) => {
                format!("#{} ERROR: {error}", vertex.0)
            }
            BuildEvent::Solver(Event::Cancelled { vertex, .. }) => format!("#{} CANCELED", vertex.0),
            BuildEvent::Output { vertex, line, .. } => format!("#{} {line}", vertex.0),
            BuildEvent::PhaseStarted { name } => format!("=> {name}"),
            BuildEvent::PhaseDone { name, duration } => {
                format!("=> {name} DONE {:.1}s", duration.as_secs_f64())
            }
            BuildEvent::Warning(w) => format!("warning: {w}"),
            BuildEvent::Pull { .. } | BuildEvent::Push { .. } => continue,
        };
        let _ = json;
        eprintln!("{line}");
    }
}
