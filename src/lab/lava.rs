//! A lava-server's jobs in the lab: which board runs one, the refusal of
//! local jobs on the boards a lava-server owns, and who owns a board as
//! `boards` shows it.
//!
//! lava-server tells its worker a job's definition and its device's
//! rendered configuration, not the device's name. The job's board is
//! therefore found among the boards that are the server's devices
//! (`lava_worker_device`) of the job's device type: the only one, or the
//! one whose LAVA commands (`commands.connect`, `power_on`, `power_off`,
//! `hard_reset`, from its own LAVA dictionary) are the ones the server
//! rendered. The board's own configuration is what the job runs with; the
//! server's rendering only names the board and is checked against it, so
//! a device whose commands differ on the two sides is refused rather than
//! run with either.
//!
//! Invariants:
//! - A lava-server's job runs on the one board chosen here, whatever other
//!   board of its type is free, and nothing but that server's jobs runs on
//!   a board it owns (`schedule::JobView::takes`).
//! - A job is refused, never guessed, when no board or several fit.

use super::api::{Caller, LabReply, LavaOwner};
use super::requests::{ready, Reply};
use super::schedule::JobView;
use super::LabActor;
use crate::error::{ApiError, ErrorCode};
use crate::lava_device::LavaDevice;
use crate::model::LavaJob;

/// A board that is a lava-server's device, as the choice needs it.
#[derive(Debug, Clone)]
pub(super) struct Candidate<'a> {
    pub name: &'a str,
    pub device_type: &'a str,
    /// Its LAVA device configuration, when it was configured by one.
    pub lava: Option<&'a LavaDevice>,
}

/// The commands of a LAVA device configuration that say which device it
/// is, as argv.
fn commands(d: &LavaDevice) -> [Vec<Vec<String>>; 4] {
    [
        d.connect.clone().into_iter().collect(),
        d.power_on.clone(),
        d.power_off.clone(),
        d.hard_reset.clone(),
    ]
}

/// Which board runs a lava-server job of `device_type` whose device the
/// server rendered as `server` (None when labd could not read it).
pub(super) fn pick_board(
    boards: &[Candidate],
    device_type: &str,
    server: Option<&LavaDevice>,
) -> Result<String, String> {
    let of_type: Vec<&Candidate> = boards
        .iter()
        .filter(|b| b.device_type == device_type)
        .collect();
    let same = |b: &Candidate| match (b.lava, server) {
        (Some(ours), Some(theirs)) => Some(commands(ours) == commands(theirs)),
        _ => None,
    };
    match of_type.as_slice() {
        [] => Err(format!(
            "no board of this worker is a LAVA device of type `{device_type}` (a board names its device with `lava_worker_device`)"
        )),
        [one] => match same(one) {
            Some(false) => Err(format!(
                "board {} is this worker's only `{device_type}` device, but the server's configuration of the job's device has other commands (connect and power) than the board's own LAVA configuration: the board's is the one labd runs, so make the server's device dictionary the same",
                one.name
            )),
            _ => Ok(one.name.to_owned()),
        },
        several => {
            let matching: Vec<&&Candidate> = several
                .iter()
                .filter(|b| same(b) == Some(true))
                .collect();
            match matching.as_slice() {
                [one] => Ok(one.name.to_owned()),
                _ => Err(format!(
                    "boards {} are all `{device_type}` devices of this worker, and the server's configuration of the job's device names {} of them by its commands (connect and power): give each board its LAVA dictionary (`lava_device`) as the server has it",
                    several.iter().map(|b| b.name).collect::<Vec<_>>().join(", "),
                    if matching.is_empty() { "none" } else { "more than one" }
                )),
            }
        }
    }
}

impl LabActor {
    /// `SubmitLava`: stores and queues a lava-server's job for the board of
    /// its device. Asked again for the same server job, it answers the job
    /// already stored.
    pub(super) fn submit_lava(
        &mut self,
        lava_id: u64,
        definition: String,
        device: String,
        caller: Caller,
    ) -> Reply {
        if let Err(e) = caller.require_admin("run a lava-server's job") {
            return ready(Err(e));
        }
        let file = format!("lava job {lava_id}");
        let device_type = match crate::job::parse(&file, &definition) {
            Ok(p) => p.definition.device_type,
            // The submit below says what is wrong, with the key path.
            Err(_) => return self.submit_for(definition, file, caller, None),
        };
        let server = crate::lava_device::from_yaml(
            &format!("lava job {lava_id}'s device"),
            &device,
            Some(&device_type),
        );
        if let Err(e) = &server {
            tracing::debug!(job = lava_id, error = %e, "the server's device configuration is not one labd reads; the board is chosen by device type alone");
        }
        let candidates: Vec<Candidate> = self
            .boards
            .values()
            .filter(|s| s.cfg.lava_worker_device.is_some())
            .map(|s| Candidate {
                name: &s.cfg.name,
                device_type: &s.cfg.device_type,
                lava: s.cfg.lava.as_deref(),
            })
            .collect();
        let board = match pick_board(&candidates, &device_type, server.as_ref().ok()) {
            Ok(b) => b,
            Err(why) => {
                return ready(Err(ApiError::new(
                    ErrorCode::NoSuchBoard,
                    format!("{file}: {why}"),
                )))
            }
        };
        let lava = LavaJob { id: lava_id, board };
        self.submit_for(definition, file, caller, Some(lava))
    }

    /// The lava-server that owns board `s`, as `boards` shows it: its
    /// device name there, the server and this worker. The config's
    /// validation gives every such board a `[lava]`.
    pub(super) fn lava_owner(&self, s: &super::Slot) -> Option<LavaOwner> {
        let device = s.cfg.lava_worker_device.as_ref()?;
        let lava = self.cfg.lava.as_ref()?;
        Some(LavaOwner {
            device: device.clone(),
            url: lava.url.clone(),
            worker: lava.worker.clone(),
        })
    }

    /// Whether a lava-server's job can run on its board (`lava.board`).
    pub(super) fn check_lava_runnable(
        &self,
        parsed: &crate::job::Parsed,
        lava: &LavaJob,
    ) -> Result<(), ApiError> {
        if let Some((at, path)) = parsed.files.first() {
            return Err(ApiError {
                code: ErrorCode::PermissionDenied,
                message: format!(
                    "{at}: `file://{path}`: a lava-server's job reads no file of this host (its submitter is no user here); serve the artifact over http(s)"
                ),
                location: Some(at.clone()),
            });
        }
        let Some(slot) = self.boards.get(&lava.board) else {
            return Err(super::requests::not_found(&lava.board));
        };
        if slot.health == crate::model::BoardHealth::Retired {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                format!("board {} is retired", lava.board),
            ));
        }
        self.check_runnable_on(&parsed.definition, &slot.dt)
    }

    /// Refuses a local job that only boards a lava-server owns could run,
    /// naming them and the server: they take that server's jobs alone.
    pub(super) fn refuse_lava_owned(&self, wants: &JobView) -> Result<(), ApiError> {
        let owned: Vec<String> = self
            .boards
            .values()
            .filter(|s| {
                s.cfg.lava_worker_device.is_some() && wants.fits(&s.cfg.device_type, &s.cfg.tags)
            })
            .map(|s| {
                format!(
                    "{} (LAVA device {})",
                    s.cfg.name,
                    s.cfg.lava_worker_device.as_deref().unwrap_or_default()
                )
            })
            .collect();
        if owned.is_empty() {
            return Ok(());
        }
        let server = self
            .cfg
            .lava
            .as_ref()
            .map_or_else(String::new, |l| format!(" {} (worker {})", l.url, l.worker));
        Err(ApiError::new(
            ErrorCode::PermissionDenied,
            format!(
                "the boards of device type `{}` are owned by the LAVA server{server}: {}; submit the job there",
                wants.device_type,
                owned.join(", ")
            ),
        ))
    }
}

impl LabReply {
    /// The labd job a submit stored, if it was one.
    pub fn submitted_id(&self) -> Option<crate::model::JobId> {
        match self {
            LabReply::Submitted { id, .. } => Some(*id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(connect: &str) -> LavaDevice {
        let yaml = format!("commands:\n  connect: {connect}\n  power_on: on {connect}\n  power_off: off {connect}\nactions:\n  deploy:\n    methods:\n      tftp:\n  boot:\n    methods:\n      minimal:\n");
        crate::lava_device::from_yaml("d.yaml", &yaml, Some("t")).unwrap()
    }

    #[test]
    fn a_board_is_chosen_by_device_type_then_by_its_commands() {
        let (a, b) = (device("con a"), device("con b"));
        let one = [Candidate {
            name: "x",
            device_type: "t",
            lava: None,
        }];
        // The only board of the type, with nothing to compare: it.
        assert_eq!(pick_board(&one, "t", Some(&a)).unwrap(), "x");
        assert!(pick_board(&one, "u", Some(&a))
            .unwrap_err()
            .contains("no board"));
        let two = [
            Candidate {
                name: "x",
                device_type: "t",
                lava: Some(&a),
            },
            Candidate {
                name: "y",
                device_type: "t",
                lava: Some(&b),
            },
        ];
        assert_eq!(pick_board(&two, "t", Some(&b)).unwrap(), "y");
        assert_eq!(pick_board(&two, "t", Some(&a)).unwrap(), "x");
        // Several and nothing to tell them apart: refused, naming them.
        let e = pick_board(&two, "t", None).unwrap_err();
        assert!(e.contains("x, y") && e.contains("none"), "{e}");
        // The only board, whose commands the server's rendering contradicts.
        let e = pick_board(&two[..1], "t", Some(&b)).unwrap_err();
        assert!(e.contains("other commands"), "{e}");
    }
}
