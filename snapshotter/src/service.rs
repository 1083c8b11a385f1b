//! containerd's snapshots service (`containerd.services.snapshots.v1`) over
//! the blocking operations of snapshots.rs, through the `containerd-snapshots`
//! crate's `Snapshotter` trait and gRPC server.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{tonic, Info, Kind as ApiKind, Snapshotter, Usage};

use crate::error::Error;
use crate::log;
use crate::snapshots::Snapshots;
use crate::store::{Kind, Record};

/// The gRPC face of [`Snapshots`].
#[derive(Clone)]
pub struct Service {
    inner: Arc<Snapshots>,
}

impl Service {
    /// Serves `snapshots`.
    pub fn new(snapshots: Arc<Snapshots>) -> Self {
        Service { inner: snapshots }
    }

    /// Runs `f` on a blocking thread: every operation does syscalls and
    /// fsyncs that must not stall the async runtime.
    async fn run<T: Send + 'static>(
        &self,
        what: String,
        f: impl FnOnce(&Snapshots) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let inner = self.inner.clone();
        log::info(&what);
        let start = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || f(&inner))
            .await
            .unwrap_or_else(|e| Err(Error::Store(format!("operation panicked: {e}"))));
        if let Err(e) = &result {
            log::info(&format!("{what}: {e}"));
        }
        if log::enabled(2) {
            log::info(&format!(
                "{what}: {:.2} ms",
                start.elapsed().as_secs_f64() * 1e3
            ));
        }
        result
    }
}

fn info(name: String, r: Record) -> Info {
    Info {
        kind: match r.kind {
            Kind::Active => ApiKind::Active,
            Kind::View => ApiKind::View,
            Kind::Committed => ApiKind::Committed,
        },
        name,
        parent: r.parent,
        labels: r.labels.into_iter().collect(),
        created_at: r.created,
        updated_at: r.updated,
    }
}

fn sorted(labels: HashMap<String, String>) -> BTreeMap<String, String> {
    labels.into_iter().collect()
}

#[tonic::async_trait]
impl Snapshotter for Service {
    type Error = Error;

    async fn stat(&self, key: String) -> Result<Info, Error> {
        let k = key.clone();
        let r = self.run(format!("stat {key}"), move |s| s.stat(&k)).await?;
        Ok(info(key, r))
    }

    async fn update(&self, i: Info, fieldpaths: Option<Vec<String>>) -> Result<Info, Error> {
        let key = i.name.clone();
        let k = key.clone();
        let labels = sorted(i.labels);
        let paths = fieldpaths.unwrap_or_default();
        let r = self
            .run(format!("update {key} {paths:?}"), move |s| {
                s.update(&k, labels, &paths)
            })
            .await?;
        Ok(info(key, r))
    }

    async fn usage(&self, key: String) -> Result<Usage, Error> {
        let (size, inodes) = self
            .run(format!("usage {key}"), move |s| s.usage(&key))
            .await?;
        Ok(Usage { inodes, size })
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, Error> {
        self.run(format!("mounts {key}"), move |s| s.mounts(&key))
            .await
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Error> {
        let labels = sorted(labels);
        self.run(format!("prepare {key} on {parent:?}"), move |s| {
            s.create(Kind::Active, &key, &parent, labels)
        })
        .await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Error> {
        let labels = sorted(labels);
        self.run(format!("view {key} on {parent:?}"), move |s| {
            s.create(Kind::View, &key, &parent, labels)
        })
        .await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Error> {
        let labels = sorted(labels);
        self.run(format!("commit {key} as {name}"), move |s| {
            s.commit(&name, &key, labels)
        })
        .await
    }

    async fn remove(&self, key: String) -> Result<(), Error> {
        self.run(format!("remove {key}"), move |s| s.remove(&key))
            .await
    }

    async fn clear(&self) -> Result<(), Error> {
        let report = self.run("cleanup".into(), |s| s.cleanup()).await?;
        if !report.removed_dirs.is_empty() || !report.removed_mounts.is_empty() {
            log::info(&format!("cleanup: {report:?}"));
        }
        Ok(())
    }

    type InfoStream = tokio_stream::Iter<std::vec::IntoIter<Result<Info, Error>>>;

    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> Result<Self::InfoStream, Error> {
        let all = self
            .run(format!("list {filters:?}"), move |s| s.list(&filters))
            .await?;
        let infos: Vec<Result<Info, Error>> =
            all.into_iter().map(|(k, r)| Ok(info(k, r))).collect();
        Ok(tokio_stream::iter(infos))
    }
}
