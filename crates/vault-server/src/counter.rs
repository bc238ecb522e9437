//! A monotonic counter outside the data directory: a TPM 2.0 NV index of type counter
//! (docs/OPERATIONS.md §Rollback). The replica binds its sealed state to the counter's
//! value (`raft/anchor.rs`), so a copy of its data directory put back later is older
//! than the counter says and is refused.
//!
//! The TPM is reached through `tss-esapi` (the `tpm` feature; it links `libtss2`), with a
//! TCTI string such as `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`. The
//! index is defined on first use under the owner hierarchy (empty owner password, as a
//! fresh TPM has), with its own empty authorisation for reads and increments and no
//! dictionary-attack lockout. A TPM initialises a new counter to at least the highest
//! value any counter of it ever held, so undefining and defining the index again never
//! takes the value back.

use serde::Deserialize;
use std::fmt;

/// Where the counter lives (`[tpm_counter]` in a replica's configuration).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CounterSettings {
    /// How to reach the TPM: `device:/dev/tpmrm0`, `swtpm:host=H,port=P`, ...
    pub tcti: String,
    /// The NV index, from 0x01000000 to 0x01FFFFFF (TOML takes `0x01500016`).
    pub nv_index: u32,
    /// The longest time between a growth of the acknowledged log and the advance of
    /// the counter that covers it. Each advance is one NV write.
    #[serde(default = "default_advance_every_ms")]
    pub advance_every_ms: u64,
}

fn default_advance_every_ms() -> u64 {
    5_000
}

impl CounterSettings {
    /// Checks the values (not the TPM).
    pub fn check(&self) -> Result<(), String> {
        if !(0x0100_0000..=0x01FF_FFFF).contains(&self.nv_index) {
            return Err(format!(
                "[tpm_counter] nv_index = {:#010x} is not an NV index: use 0x01000000 to 0x01ffffff",
                self.nv_index
            ));
        }
        if !(100..=3_600_000).contains(&self.advance_every_ms) {
            return Err(
                "[tpm_counter] advance_every_ms must be between 100 and 3600000".to_owned(),
            );
        }
        Ok(())
    }
}

/// The counter cannot be read or advanced.
#[derive(Debug, thiserror::Error)]
#[error("monotonic counter {counter}: {reason}")]
pub struct CounterError {
    /// Which counter.
    pub counter: String,
    /// What failed and what to do.
    pub reason: String,
}

/// A value that only goes up, kept where a copy of the data directory cannot reach.
pub trait MonotonicCounter: Send + Sync + fmt::Debug {
    /// Its current value.
    fn read(&self) -> Result<u64, CounterError>;
    /// Adds one.
    fn increment(&self) -> Result<(), CounterError>;
}

/// Opens the counter `settings` names, defining its NV index on first use.
pub fn open(settings: &CounterSettings) -> Result<Box<dyn MonotonicCounter>, CounterError> {
    settings.check().map_err(|reason| CounterError {
        counter: settings.tcti.clone(),
        reason,
    })?;
    open_tpm(settings)
}

#[cfg(not(feature = "tpm"))]
fn open_tpm(settings: &CounterSettings) -> Result<Box<dyn MonotonicCounter>, CounterError> {
    Err(CounterError {
        counter: settings.tcti.clone(),
        reason: "this backlock was built without TPM support: build it with `--features tpm` (needs Debian's libtss2-dev), or remove [tpm_counter]".to_owned(),
    })
}

#[cfg(feature = "tpm")]
fn open_tpm(settings: &CounterSettings) -> Result<Box<dyn MonotonicCounter>, CounterError> {
    let counter = tpm::TpmCounter::new(settings)?;
    counter.define_if_absent()?;
    Ok(Box::new(counter))
}

#[cfg(feature = "tpm")]
mod tpm {
    use super::{CounterError, CounterSettings, MonotonicCounter};
    use std::str::FromStr;
    use tss_esapi::attributes::NvIndexAttributesBuilder;
    use tss_esapi::constants::nv_index_type::NvIndexType;
    use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, TpmHandle};
    use tss_esapi::interface_types::algorithm::HashingAlgorithm;
    use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
    use tss_esapi::interface_types::session_handles::AuthSession;
    use tss_esapi::structures::NvPublicBuilder;
    use tss_esapi::tcti_ldr::TctiNameConf;
    use tss_esapi::Context;

    /// A TPM 2.0 NV counter. Each call opens its own connection: an ESAPI context may
    /// not move between threads, and the counter is used a few times a minute at most.
    #[derive(Debug)]
    pub(super) struct TpmCounter {
        tcti: TctiNameConf,
        index: NvIndexTpmHandle,
        name: String,
    }

    impl TpmCounter {
        pub(super) fn new(settings: &CounterSettings) -> Result<Self, CounterError> {
            let name = format!("{} NV {:#010x}", settings.tcti, settings.nv_index);
            let fail = |reason: String| CounterError {
                counter: name.clone(),
                reason,
            };
            let tcti = TctiNameConf::from_str(&settings.tcti).map_err(|e| {
                fail(format!(
                    "the TCTI is not understood ({e}): use device:/dev/tpmrm0 or swtpm:host=H,port=P"
                ))
            })?;
            let index = NvIndexTpmHandle::new(settings.nv_index)
                .map_err(|e| fail(format!("not an NV index: {e}")))?;
            Ok(TpmCounter { tcti, index, name })
        }

        fn fail(&self, what: &str, e: tss_esapi::Error) -> CounterError {
            CounterError {
                counter: self.name.clone(),
                reason: format!(
                    "{what}: {e}; check that the TPM is reachable and the index is this replica's"
                ),
            }
        }

        fn context(&self) -> Result<Context, CounterError> {
            Context::new(self.tcti.clone()).map_err(|e| self.fail("cannot reach the TPM", e))
        }

        fn handle(&self, context: &mut Context) -> Result<NvIndexHandle, CounterError> {
            context
                .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(self.index)))
                .map(NvIndexHandle::from)
                .map_err(|e| self.fail("cannot open the NV index", e))
        }

        /// Defines the index as a counter if the TPM has none there, and writes it once
        /// (a counter cannot be read before its first increment).
        pub(super) fn define_if_absent(&self) -> Result<(), CounterError> {
            let mut context = self.context()?;
            let defined = tss_esapi::abstraction::nv::list(&mut context)
                .map_err(|e| self.fail("cannot list NV indexes", e))?;
            if let Some((public, _)) = defined.iter().find(|(p, _)| p.nv_index() == self.index) {
                let attributes = public.attributes();
                let kind = attributes
                    .index_type()
                    .map_err(|e| self.fail("cannot read the index's type", e))?;
                if kind != NvIndexType::Counter || !attributes.auth_read() {
                    return Err(CounterError {
                        counter: self.name.clone(),
                        reason: "the NV index exists but is not a counter readable with its own authorisation: choose another nv_index".to_owned(),
                    });
                }
                if attributes.written() {
                    return Ok(());
                }
            } else {
                let attributes = NvIndexAttributesBuilder::new()
                    .with_nv_index_type(NvIndexType::Counter)
                    .with_auth_read(true)
                    .with_auth_write(true)
                    .with_no_da(true)
                    .build()
                    .map_err(|e| self.fail("cannot build the index's attributes", e))?;
                let public = NvPublicBuilder::new()
                    .with_nv_index(self.index)
                    .with_index_name_algorithm(HashingAlgorithm::Sha256)
                    .with_index_attributes(attributes)
                    .with_data_area_size(8)
                    .build()
                    .map_err(|e| self.fail("cannot describe the index", e))?;
                context
                    .execute_with_session(Some(AuthSession::Password), |c| {
                        c.nv_define_space(Provision::Owner, None, public)
                    })
                    .map_err(|e| {
                        self.fail("cannot define the NV index under the owner hierarchy (define it with tpm2_nvdefine as docs/OPERATIONS.md shows if the owner has a password)", e)
                    })?;
            }
            drop(context);
            self.increment()
        }
    }

    impl MonotonicCounter for TpmCounter {
        fn read(&self) -> Result<u64, CounterError> {
            let mut context = self.context()?;
            let handle = self.handle(&mut context)?;
            let value = context
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.nv_read(NvAuth::NvIndex(handle), handle, 8, 0)
                })
                .map_err(|e| self.fail("cannot read the counter", e))?;
            let bytes: [u8; 8] = value.value().try_into().map_err(|_| CounterError {
                counter: self.name.clone(),
                reason: format!("the counter holds {} bytes, not 8", value.value().len()),
            })?;
            Ok(u64::from_be_bytes(bytes))
        }

        fn increment(&self) -> Result<(), CounterError> {
            let mut context = self.context()?;
            let handle = self.handle(&mut context)?;
            context
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.nv_increment(NvAuth::NvIndex(handle), handle)
                })
                .map_err(|e| self.fail("cannot advance the counter", e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_outside_the_nv_range_or_interval_are_refused() {
        let mut settings = CounterSettings {
            tcti: "swtpm:port=2321".into(),
            nv_index: 0x0150_0016,
            advance_every_ms: 5_000,
        };
        assert!(settings.check().is_ok());
        settings.nv_index = 0x8100_0001;
        assert!(settings.check().unwrap_err().contains("not an NV index"));
        settings.nv_index = 0x0150_0016;
        settings.advance_every_ms = 10;
        assert!(settings.check().is_err());
    }
}
