//! The stream catalog: the business rules of the control plane on top of the index and
//! the keyring. It resolves `StreamName | StreamARN` the same way for every API and is
//! the one place that checks the caller's [`Access`] against a stream: on the record it
//! resolves, the name it creates, and each stream it lists. It creates streams with a
//! fresh wrapped data key, applies version-checked updates, and caches unwrapped data
//! keys for the data plane (dropped when a stream is deleted). It also keeps the stream
//! storage configuration (one tier in fact; the requested one is stored and described).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::auth::Access;
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::error::{Error, ErrorKind, Result};
use crate::gc::Trigger;
use crate::index::{Index, NewStream, StreamRecord, StreamUpdate};
use crate::model::{self, StreamArn, StreamName};
use crate::store::{DataKey, FragmentStore};

/// Stream-level operations shared by every API family.
#[derive(Debug, Clone)]
pub struct Catalog {
    index: Arc<dyn Index>,
    store: FragmentStore,
    clock: SharedClock,
    region: String,
    account_id: String,
    default_retention_hours: i64,
    max_streams: u64,
    keys: Arc<Mutex<HashMap<String, Arc<DataKey>>>>,
    /// Wakes the retention task (UpdateDataRetention with DECREASE).
    retention: Trigger,
}

/// Input of [`Catalog::create`].
#[derive(Debug, Clone, Default)]
pub struct CreateStream {
    pub name: String,
    pub device_name: Option<String>,
    pub media_type: Option<String>,
    pub kms_key_id: Option<String>,
    pub retention_hours: Option<i64>,
    pub tags: Option<BTreeMap<String, String>>,
    /// `StreamStorageConfiguration.DefaultStorageTier`, already checked by
    /// `model::check_storage_tier`.
    pub storage_tier: Option<String>,
}

/// `stream_configs.kind` of the stream storage configuration (`{"DefaultStorageTier"}`).
pub const STORAGE_CONFIG_KIND: &str = "stream_storage";
/// The tier of a stream created without a storage configuration (AWS's default).
pub const DEFAULT_STORAGE_TIER: &str = "HOT";

fn storage_doc(tier: &str) -> String {
    serde_json::json!({ "DefaultStorageTier": tier }).to_string()
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Catalog {
    pub fn new(
        settings: &Settings,
        index: Arc<dyn Index>,
        store: FragmentStore,
        clock: SharedClock,
    ) -> Self {
        Self {
            index,
            store,
            clock,
            region: settings.region.clone(),
            account_id: settings.account_id.clone(),
            default_retention_hours: settings.default_retention_hours,
            max_streams: settings.max_streams,
            keys: Arc::default(),
            retention: Trigger::default(),
        }
    }

    /// The trigger of the retention task that serves this catalog.
    pub fn retention_trigger(&self) -> &Trigger {
        &self.retention
    }

    pub fn index(&self) -> &Arc<dyn Index> {
        &self.index
    }

    pub fn store(&self) -> &FragmentStore {
        &self.store
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The ARN of a stream.
    pub fn arn(&self, s: &StreamRecord) -> String {
        StreamArn::format(&self.region, &self.account_id, &s.name, s.creation_ms)
    }

    /// Resolves `StreamName | StreamARN` and checks that `access` allows its operation on
    /// that stream. `arn_kind` is the error kind for a malformed ARN
    /// (`InvalidResourceFormat` on tag operations, `InvalidArgument` elsewhere). When both
    /// are given they must name the same stream. A key that may not touch the stream
    /// gets `NotAuthorized` whether or not it exists (no existence oracle).
    pub async fn resolve(
        &self,
        access: &Access,
        name: Option<&str>,
        arn: Option<&str>,
        arn_kind: ErrorKind,
    ) -> Result<StreamRecord> {
        let by_arn = match arn {
            Some(a) => Some(StreamArn::parse(a, arn_kind)?),
            None => None,
        };
        let name = match (name, &by_arn) {
            (None, None) => {
                return Err(Error::invalid("either StreamName or StreamARN is required"));
            }
            (Some(n), Some(a)) if n != a.name.as_str() => {
                return Err(Error::invalid(format!(
                    "StreamName and StreamARN name different streams: name={n} arn_name={}",
                    a.name
                )));
            }
            (Some(n), _) => StreamName::parse(n)?,
            (None, Some(a)) => a.name.clone(),
        };
        access.check_stream(name.as_str())?;
        let rec = self.index.get_stream(&name).await?;
        let rec = rec.ok_or_else(|| Error::stream_not_found(name.as_str()))?;
        // The record is looked up by that name; checked again on the record itself so a
        // future lookup by id cannot skip the decision.
        access.check_stream(rec.name.as_str())?;
        if let Some(a) = by_arn
            && (a.creation_ms != rec.creation_ms
                || a.partition != model::partition(&self.region)
                || a.region != self.region
                || a.account != self.account_id)
        {
            // Same name, other incarnation or other partition/region/account: not this stream.
            return Err(Error::not_found(format!(
                "stream not found: arn={}",
                arn.unwrap_or_default()
            )));
        }
        Ok(rec)
    }

    /// CreateStream, if `access` allows it on the new stream's name.
    pub async fn create(&self, access: &Access, req: CreateStream) -> Result<StreamRecord> {
        let name = StreamName::parse(&req.name)?;
        access.check_stream(name.as_str())?;
        if let Some(d) = &req.device_name {
            model::check_name("DeviceName", d, 128)?;
        }
        if let Some(m) = &req.media_type {
            model::check_media_type(m)?;
        }
        let retention = req.retention_hours.unwrap_or(self.default_retention_hours);
        model::check_retention(retention)?;
        if let Some(t) = &req.tags {
            model::check_tags(t)?;
        }
        let keyring = self.store.keyring();
        let kms_key_id = match &req.kms_key_id {
            Some(k) => {
                if k.is_empty() || k.len() > 2048 {
                    return Err(Error::invalid("KmsKeyId must be 1 to 2048 characters"));
                }
                if !keyring.contains(k) {
                    return Err(Error::invalid(format!(
                        "KmsKeyId names no key in this server's keyring: key_id={k}"
                    )));
                }
                k.clone()
            }
            None => keyring.default_id().to_owned(),
        };
        let stream_id = new_id();
        let (dek, wrapped) = keyring
            .new_data_key(&kms_key_id, &stream_id)
            .map_err(|e| Error::internal(e.to_string()))?;
        let rec = self
            .index
            .create_stream(
                NewStream {
                    stream_id: stream_id.clone(),
                    name,
                    device_name: req.device_name,
                    media_type: req.media_type,
                    kms_key_id,
                    version: new_id(),
                    creation_ms: self.clock.now_ms(),
                    retention_hours: retention,
                    wrapped_key: wrapped,
                    tags: req.tags.unwrap_or_default(),
                },
                self.max_streams,
            )
            .await?;
        self.keys
            .lock()
            .expect("key cache")
            .insert(stream_id, Arc::new(dek));
        if let Some(tier) = req
            .storage_tier
            .as_deref()
            .filter(|t| *t != DEFAULT_STORAGE_TIER)
        {
            // A second transaction: should it be lost, the stream reads as the default tier.
            self.index
                .put_stream_config(&rec.stream_id, STORAGE_CONFIG_KIND, Some(storage_doc(tier)))
                .await?;
        }
        Ok(rec)
    }

    /// The stream's `DefaultStorageTier` (HOT unless one was set).
    pub async fn storage_tier(&self, s: &StreamRecord) -> Result<String> {
        let doc = self
            .index
            .get_stream_config(&s.stream_id, STORAGE_CONFIG_KIND)
            .await?;
        let Some(doc) = doc else {
            return Ok(DEFAULT_STORAGE_TIER.to_owned());
        };
        let v: serde_json::Value = serde_json::from_str(&doc)
            .map_err(|e| Error::internal(format!("stored storage configuration: {e}")))?;
        Ok(v["DefaultStorageTier"]
            .as_str()
            .unwrap_or(DEFAULT_STORAGE_TIER)
            .to_owned())
    }

    /// UpdateStreamStorageConfiguration: a version-checked change that sets a new version.
    pub async fn set_storage_tier(
        &self,
        s: &StreamRecord,
        version: &str,
        tier: &str,
    ) -> Result<()> {
        let update = StreamUpdate::Config {
            kind: STORAGE_CONFIG_KIND.to_owned(),
            body: Some(storage_doc(tier)),
        };
        self.update(s, Some(version), update).await?;
        Ok(())
    }

    /// ListStreams: up to `limit` streams after `after` (by name) whose name starts with
    /// `prefix`, and only those `access` may see; the second value says whether more
    /// follow. Pages of the index are read until `limit` visible streams are found.
    pub async fn list(
        &self,
        access: &Access,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<StreamRecord>, bool)> {
        let batch = (limit + 1).clamp(100, 10_001);
        let mut out = Vec::new();
        let mut cursor = after.map(str::to_owned);
        loop {
            let page = self
                .index
                .list_streams(prefix, cursor.as_deref(), batch)
                .await?;
            let exhausted = page.len() < batch;
            cursor = page.last().map(|s| s.name.as_str().to_owned());
            for s in page {
                if access.may_see(s.name.as_str()) {
                    if out.len() == limit {
                        return Ok((out, true));
                    }
                    out.push(s);
                }
            }
            if exhausted {
                return Ok((out, false));
            }
        }
    }

    /// Applies a version-checked metadata change.
    pub async fn update(
        &self,
        s: &StreamRecord,
        expected_version: Option<&str>,
        update: StreamUpdate,
    ) -> Result<StreamRecord> {
        if let Some(v) = expected_version {
            model::check_version(v)?;
        }
        let decrease =
            matches!(update, StreamUpdate::Retention { hours } if hours < s.retention_hours);
        let out = self
            .index
            .update_stream(&s.stream_id, expected_version, update, &new_id())
            .await?;
        if decrease {
            // Reads hide the now-expired fragments already; delete them now too.
            self.retention.wake();
        }
        Ok(out)
    }

    /// DeleteStream: the data key is destroyed and the rows removed in one transaction;
    /// objects are removed later by the garbage sweep.
    pub async fn delete(&self, s: &StreamRecord, expected_version: Option<&str>) -> Result<()> {
        if let Some(v) = expected_version {
            model::check_version(v)?;
        }
        self.index
            .delete_stream(&s.stream_id, expected_version, self.clock.now_ms())
            .await?;
        self.keys.lock().expect("key cache").remove(&s.stream_id);
        Ok(())
    }

    /// The unwrapped data key of a stream (cached).
    pub fn data_key(&self, s: &StreamRecord) -> Result<Arc<DataKey>> {
        if let Some(k) = self.keys.lock().expect("key cache").get(&s.stream_id) {
            return Ok(k.clone());
        }
        let k = self
            .store
            .keyring()
            .unwrap_data_key(&s.kms_key_id, &s.stream_id, &s.wrapped_key)
            .map_err(|e| Error::internal(e.to_string()))?;
        let k = Arc::new(k);
        self.keys
            .lock()
            .expect("key cache")
            .insert(s.stream_id.clone(), k.clone());
        Ok(k)
    }
}
