//! Snapshots of the local etcd member for the controller (`EtcdOp::Snapshot`): read through
//! etcd's JSON gateway into a file in the agent's state directory, then uploaded with
//! `PUT {SNAPSHOTS_PATH}/{id}` over the agent's connection to the controller.
//!
//! The whole snapshot is on disk before the upload starts: while etcd streams it, the member
//! holds a read transaction open on its database, so the stream is drained as fast as the disk
//! takes it rather than at the pace of the link to the controller.
//!
//! The gateway answers the server-streamed `Maintenance.Snapshot` call with one JSON object a
//! line, `{"result":{"remaining_bytes":"<u64>","blob":"<base64>"}}`, or
//! `{"error":{"message":..}}` when it fails midway. Fields at their default value are left
//! out: the header is empty, and the last chunks have no `remaining_bytes`. etcd 3.4 sends the
//! database in 32 KiB chunks, then its own SHA-256 of them as one more chunk; the file keeps
//! both, as `etcdctl snapshot save` does, and the checksum is checked before the upload.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::client::conn::http2::SendRequest;
use hyper::{Method, StatusCode, header};
use qb_agent_proto::Sha256Hex;
use qb_agent_proto::etcd::{
    EtcdRequest, SNAPSHOT_REVISION_HEADER, SNAPSHOT_SHA256_HEADER, SNAPSHOTS_PATH, SnapshotTaken,
};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};

use crate::connect::{Body, controller_request};
use crate::etcd::{Client, EtcdError, uint64};

const STATUS_PATH: &str = "/v3/maintenance/status";
const SNAPSHOT_PATH: &str = "/v3/maintenance/snapshot";
/// etcd's messages carry 32 KiB (about 44 KiB of JSON); a much longer one is not etcd's.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// How long etcd may send nothing while it streams the snapshot.
const STREAM_IDLE: Duration = Duration::from_secs(60);
/// The length of etcd's SHA-256 at the end of the stream.
const CHECKSUM_BYTES: usize = 32;
/// The snapshot file's write buffer, and the size of the upload's frames.
const CHUNK_BYTES: usize = 256 * 1024;
/// Free space left on the snapshot's disk beyond the snapshot itself: the same disk often
/// holds etcd's data and the kubelet's, which must not run out.
const DISK_SPARE: u64 = 512 << 20;
/// How many times a failed upload is tried again, with [`UPLOAD_PAUSE`] times the attempt's
/// number in between.
const UPLOAD_RETRIES: u32 = 3;
const UPLOAD_PAUSE: Duration = Duration::from_secs(2);
/// How much of the controller's refusal is read.
const MAX_PROBLEM_BYTES: usize = 64 * 1024;

/// Why a snapshot was not taken or not uploaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reaching the member, or its status or the start of the snapshot refused.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("etcd's snapshot stream broke off")]
    Stream(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("etcd sent nothing of the snapshot for {} s", STREAM_IDLE.as_secs())]
    Stalled,
    /// etcd reported a failure within the stream; `0` is its message.
    #[error("etcd failed the snapshot: {0}")]
    Failed(String),
    #[error("a message of etcd's snapshot stream is malformed")]
    Decode(#[source] serde_json::Error),
    #[error("a chunk of etcd's snapshot is not base64")]
    Base64(#[source] base64::DecodeError),
    #[error("a message of etcd's snapshot stream is longer than {MAX_MESSAGE_BYTES} bytes")]
    TooLong,
    #[error("a message of etcd's snapshot stream has neither a result nor an error")]
    NoResult,
    #[error("etcd's snapshot stream ended without a snapshot")]
    Empty,
    #[error("etcd's snapshot stream ended with {remaining} bytes still to come")]
    Incomplete { remaining: u64 },
    #[error("the snapshot does not match etcd's own SHA-256 at its end")]
    Checksum,
    #[error("{action} {}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Upload(#[from] UploadError),
    /// Writing the snapshot would leave the disk that etcd and the kubelet use too full.
    #[error(
        "{} has {} MiB free, and a snapshot of this {} MiB database needs {} MiB there (with {} MiB to spare)",
        dir.display(), available >> 20, database >> 20, (database + DISK_SPARE) >> 20, DISK_SPARE >> 20
    )]
    NoRoom {
        dir: PathBuf,
        available: u64,
        database: u64,
    },
}

/// Why an upload to the controller failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The controller could not be reached (anyhow's chain, which is no `source`).
    #[error("reaching the controller: {0:#}")]
    Connect(anyhow::Error),
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid upload request")]
    Request(#[source] hyper::http::Error),
    #[error("sending the snapshot to the controller")]
    Send(#[source] hyper::Error),
    /// `detail` is the problem's, or its title.
    #[error("the controller answered {status}: {detail}")]
    Refused { status: StatusCode, detail: String },
}

impl UploadError {
    /// Whether trying again may help: the connection broke, or the controller failed (5xx).
    fn retryable(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Send(_) => true,
            Self::Refused { status, .. } => status.is_server_error(),
            Self::Read { .. } | Self::Request(_) => false,
        }
    }
}

/// A snapshot in its file, which is removed when this is dropped.
#[derive(Debug)]
pub struct SnapshotFile {
    file: RemovedOnDrop,
    /// What etcd sent: the database and its SHA-256.
    pub size: u64,
    pub sha256: Sha256Hex,
    /// The member's revision before the snapshot began; the snapshot holds it, maybe more.
    pub revision: u64,
}

impl SnapshotFile {
    pub fn path(&self) -> &Path {
        &self.file.0
    }

    pub fn taken(&self) -> SnapshotTaken {
        SnapshotTaken {
            size: self.size,
            sha256: self.sha256.clone(),
            revision: self.revision,
        }
    }
}

/// A file removed when dropped, whatever happened to it meanwhile.
#[derive(Debug)]
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Takes a snapshot of the member `req` names and uploads it as snapshot `id`: the answer
/// to `EtcdOp::Snapshot`. `dir` holds the file meanwhile (see [`take`]); `open` is as for
/// [`upload`].
pub async fn run<G, F>(
    req: &EtcdRequest,
    dir: &Path,
    id: u64,
    open: impl Fn() -> F,
) -> Result<SnapshotTaken, SnapshotError>
where
    F: Future<Output = anyhow::Result<(String, SendRequest<Body>, G)>>,
{
    let snapshot = take(req, dir, id).await?;
    tracing::info!(
        snapshot = id,
        size = snapshot.size,
        revision = snapshot.revision,
        "etcd snapshot taken; uploading it"
    );
    upload(&snapshot, id, open).await?;
    Ok(snapshot.taken())
}

/// Takes a snapshot of the member `req` names into `<dir>/<id>.db` (0600; `dir` is made
/// 0700 if missing). One snapshot at a time: any file already in `dir` is a leftover of an
/// agent that stopped midway, and is removed.
pub async fn take(req: &EtcdRequest, dir: &Path, id: u64) -> Result<SnapshotFile, SnapshotError> {
    clear(dir)?;
    let mut client = Client::connect(req).await?;
    let (revision, database) = status(&mut client).await?;
    let available = rustix::fs::statvfs(dir)
        .map(|v| v.f_bavail.saturating_mul(v.f_frsize))
        .map_err(|e| SnapshotError::File {
            action: "reading the free space of",
            path: dir.to_owned(),
            source: e.into(),
        })?;
    room(dir, available, database)?;
    let body = client.call_streamed(SNAPSHOT_PATH, &json!({})).await?;
    let file = RemovedOnDrop(dir.join(format!("{id}.db")));
    let failed = |action| {
        let path = file.0.clone();
        move |source| SnapshotError::File {
            action,
            path,
            source,
        }
    };
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file.0)
        .map_err(failed("creating"))?;
    let mut out = BufWriter::with_capacity(CHUNK_BYTES, tokio::fs::File::from_std(out));
    let received = receive(body, &mut out, &file.0).await?;
    out.flush().await.map_err(failed("writing"))?;
    Ok(SnapshotFile {
        file,
        size: received.size,
        sha256: received.sha256,
        revision,
    })
}

/// Whether a snapshot of a `database` of that many bytes fits in `available` bytes of `dir`,
/// with [`DISK_SPARE`] left.
fn room(dir: &Path, available: u64, database: u64) -> Result<(), SnapshotError> {
    if available < database.saturating_add(DISK_SPARE) {
        return Err(SnapshotError::NoRoom {
            dir: dir.to_owned(),
            available,
            database,
        });
    }
    Ok(())
}

/// Makes `dir` if missing and empties it of leftovers.
fn clear(dir: &Path) -> Result<(), SnapshotError> {
    let failed = |action, path: &Path| {
        let path = path.to_owned();
        move |source| SnapshotError::File {
            action,
            path,
            source,
        }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(failed("creating", dir))?;
    for entry in std::fs::read_dir(dir).map_err(failed("listing", dir))? {
        let path = entry.map_err(failed("listing", dir))?.path();
        tracing::info!(file = %path.display(), "removing a leftover snapshot");
        std::fs::remove_file(&path).map_err(failed("removing", &path))?;
    }
    Ok(())
}

/// The member's current revision and the size of its database file, from its status.
async fn status(client: &mut Client) -> Result<(u64, u64), SnapshotError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Status {
        header: Header,
        #[serde(default, deserialize_with = "uint64")]
        db_size: u64,
    }
    #[derive(Deserialize)]
    struct Header {
        #[serde(default, deserialize_with = "uint64")]
        revision: u64,
    }
    let answer = client.call(STATUS_PATH, &json!({})).await?;
    let status: Status = serde_json::from_slice(&answer).map_err(|source| EtcdError::Decode {
        path: STATUS_PATH,
        source,
    })?;
    Ok((status.header.revision, status.db_size))
}

/// The snapshot as written: its size and SHA-256.
#[derive(Debug, PartialEq, Eq)]
struct Received {
    size: u64,
    sha256: Sha256Hex,
}

/// Decodes the gateway's stream `body` into `out` as it comes; `path` names `out` in errors.
async fn receive<B>(
    mut body: B,
    out: &mut (impl AsyncWrite + Unpin),
    path: &Path,
) -> Result<Received, SnapshotError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut decoder = Decoder::default();
    while let Some(frame) = next_frame(&mut body).await? {
        // Trailers carry nothing of the snapshot.
        if let Ok(data) = frame.into_data() {
            write(out, &decoder.push(&data)?, path).await?;
        }
    }
    write(out, &decoder.end()?, path).await?;
    decoder.finish()
}

/// The body's next frame, if any, within [`STREAM_IDLE`].
async fn next_frame<B>(body: &mut B) -> Result<Option<Frame<Bytes>>, SnapshotError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let frame = tokio::time::timeout(STREAM_IDLE, body.frame())
        .await
        .map_err(|_| SnapshotError::Stalled)?;
    frame
        .transpose()
        .map_err(|e| SnapshotError::Stream(e.into()))
}

async fn write(
    out: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
    path: &Path,
) -> Result<(), SnapshotError> {
    out.write_all(bytes)
        .await
        .map_err(|source| SnapshotError::File {
            action: "writing",
            path: path.to_owned(),
            source,
        })
}

/// The gateway's stream, decoded a piece at a time: lines of JSON messages, each carrying a
/// chunk of the snapshot, which is hashed as it passes.
#[derive(Default)]
struct Decoder {
    /// The start of a message whose end has not come yet.
    partial: Vec<u8>,
    /// `remaining_bytes` of the last message; `None` before the first.
    remaining: Option<u64>,
    /// All the snapshot's bytes: what is uploaded.
    whole: Sha256,
    size: u64,
    /// All but the last [`CHECKSUM_BYTES`], which are held back in `tail`: at the end, the
    /// database and etcd's SHA-256 of it.
    database: Sha256,
    tail: Vec<u8>,
}

/// One message of the stream.
#[derive(Deserialize)]
struct Message {
    result: Option<Chunk>,
    error: Option<StreamFailure>,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default, alias = "remainingBytes", deserialize_with = "uint64")]
    remaining_bytes: u64,
    #[serde(default)]
    blob: String,
}

#[derive(Deserialize)]
struct StreamFailure {
    #[serde(default)]
    message: String,
}

impl Decoder {
    /// The snapshot's bytes in the messages `data` completes.
    fn push(&mut self, data: &[u8]) -> Result<Vec<u8>, SnapshotError> {
        let mut pending = std::mem::take(&mut self.partial);
        // What came before holds no newline: only `data` is searched.
        let mut searched = pending.len();
        pending.extend_from_slice(data);
        let mut snapshot = Vec::new();
        let mut start = 0;
        while let Some(newline) = pending[searched..].iter().position(|&b| b == b'\n') {
            let end = searched + newline;
            let line = pending[start..end].trim_ascii();
            if !line.is_empty() {
                self.remaining = Some(decode(line, &mut snapshot)?);
            }
            start = end + 1;
            searched = start;
        }
        pending.drain(..start);
        if pending.len() > MAX_MESSAGE_BYTES {
            return Err(SnapshotError::TooLong);
        }
        self.partial = pending;
        self.account(&snapshot);
        Ok(snapshot)
    }

    /// The body ended: the snapshot's bytes in a last message without its newline.
    fn end(&mut self) -> Result<Vec<u8>, SnapshotError> {
        if self.partial.is_empty() {
            return Ok(Vec::new());
        }
        self.push(b"\n")
    }

    /// Checks that the stream ended where etcd meant it to, and that the database matches
    /// etcd's SHA-256 of it.
    fn finish(self) -> Result<Received, SnapshotError> {
        match self.remaining {
            None => return Err(SnapshotError::Empty),
            Some(0) => {}
            Some(remaining) => return Err(SnapshotError::Incomplete { remaining }),
        }
        if self.tail.len() < CHECKSUM_BYTES {
            return Err(SnapshotError::Empty);
        }
        if self.database.finalize().as_slice() != self.tail.as_slice() {
            return Err(SnapshotError::Checksum);
        }
        let sha256 = Sha256Hex::try_from(hex::encode(self.whole.finalize()))
            .expect("a SHA-256 in hex is one");
        Ok(Received {
            size: self.size,
            sha256,
        })
    }

    /// Hashes `bytes`, holding the last [`CHECKSUM_BYTES`] seen back from the database's hash.
    fn account(&mut self, bytes: &[u8]) {
        self.whole.update(bytes);
        self.size += bytes.len() as u64;
        self.tail.extend_from_slice(bytes);
        if let Some(excess) = self.tail.len().checked_sub(CHECKSUM_BYTES) {
            self.database.update(&self.tail[..excess]);
            self.tail.drain(..excess);
        }
    }
}

/// Appends the chunk `line` carries to `snapshot`; the bytes etcd says are still to come.
fn decode(line: &[u8], snapshot: &mut Vec<u8>) -> Result<u64, SnapshotError> {
    let message: Message = serde_json::from_slice(line).map_err(SnapshotError::Decode)?;
    if let Some(failure) = message.error {
        return Err(SnapshotError::Failed(failure.message));
    }
    let chunk = message.result.ok_or(SnapshotError::NoResult)?;
    base64::engine::general_purpose::STANDARD
        .decode_vec(chunk.blob.as_bytes(), snapshot)
        .map_err(SnapshotError::Base64)?;
    Ok(chunk.remaining_bytes)
}

/// Uploads `snapshot` as snapshot `id`, again after a broken connection or a failure of the
/// controller (5xx), at most [`UPLOAD_RETRIES`] times; a refusal (4xx) is final. `open`
/// gives the controller's base URL, a sender, and a mark held while the sender is in use.
pub async fn upload<G, F>(
    snapshot: &SnapshotFile,
    id: u64,
    open: impl Fn() -> F,
) -> Result<(), UploadError>
where
    F: Future<Output = anyhow::Result<(String, SendRequest<Body>, G)>>,
{
    upload_pausing(snapshot, id, open, UPLOAD_PAUSE).await
}

/// [`upload`], pausing `pause` times the retry's number before each retry.
async fn upload_pausing<G, F>(
    snapshot: &SnapshotFile,
    id: u64,
    open: impl Fn() -> F,
    pause: Duration,
) -> Result<(), UploadError>
where
    F: Future<Output = anyhow::Result<(String, SendRequest<Body>, G)>>,
{
    let mut retries = 0;
    loop {
        match upload_once(snapshot, id, open()).await {
            Ok(()) => return Ok(()),
            Err(e) if e.retryable() && retries < UPLOAD_RETRIES => {
                retries += 1;
                tracing::info!(snapshot = id, retries, error = %qb_api::error_chain(&e), "uploading the snapshot failed; trying again");
                tokio::time::sleep(pause * retries).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn upload_once<G>(
    snapshot: &SnapshotFile,
    id: u64,
    open: impl Future<Output = anyhow::Result<(String, SendRequest<Body>, G)>>,
) -> Result<(), UploadError> {
    let (base, mut sender, _in_use) = open.await.map_err(UploadError::Connect)?;
    let unreadable = |source| UploadError::Read {
        path: snapshot.path().to_owned(),
        source,
    };
    let file = tokio::fs::File::open(snapshot.path())
        .await
        .map_err(unreadable)?;
    let (body, read_failure) = file_body(file);
    let request = controller_request(Method::PUT, &format!("{base}{SNAPSHOTS_PATH}/{id}"))
        .header(header::CONTENT_LENGTH, snapshot.size)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(SNAPSHOT_SHA256_HEADER, snapshot.sha256.as_str())
        .header(SNAPSHOT_REVISION_HEADER, snapshot.revision)
        .body(body)
        .map_err(UploadError::Request)?;
    let sent = sender.send_request(request).await;
    if let Some(source) = read_failure
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(unreadable(source));
    }
    let response = sent.map_err(UploadError::Send)?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let detail = problem_detail(response.into_body()).await;
    Err(UploadError::Refused { status, detail })
}

/// `file` as a body read while it is sent. A read error ends the body short (which the
/// controller refuses: the length is announced) and is left in the slot returned.
fn file_body(file: tokio::fs::File) -> (Body, Arc<Mutex<Option<io::Error>>>) {
    let failure = Arc::new(Mutex::new(None));
    let slot = failure.clone();
    let frames = futures_util::stream::unfold(Some(file), move |file| {
        let slot = slot.clone();
        async move {
            let mut file = file?;
            let mut buffer = vec![0; CHUNK_BYTES];
            match file.read(&mut buffer).await {
                Ok(0) => None,
                Ok(n) => {
                    buffer.truncate(n);
                    Some((Ok(Frame::data(Bytes::from(buffer))), Some(file)))
                }
                Err(e) => {
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    None
                }
            }
        }
    });
    (StreamBody::new(frames).boxed(), failure)
}

/// The `detail` (else the `title`) of the controller's problem answer, or what it sent.
async fn problem_detail(body: hyper::body::Incoming) -> String {
    /// The parts of a `qb_api::Problem` read here, whatever its code.
    #[derive(Deserialize)]
    struct Problem {
        #[serde(default)]
        title: String,
        #[serde(default)]
        detail: String,
    }
    let bytes = match Limited::new(body, MAX_PROBLEM_BYTES).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return format!("(its answer could not be read: {e})"),
    };
    match serde_json::from_slice::<Problem>(&bytes) {
        Ok(problem) if !problem.detail.is_empty() => problem.detail,
        Ok(problem) if !problem.title.is_empty() => problem.title,
        _ => String::from_utf8_lossy(&bytes).trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::os::unix::fs::PermissionsExt as _;
    use std::process::Command;

    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use qb_agent_proto::etcd::EtcdOp;

    use super::*;
    use crate::etcd::{Server, pki};

    /// etcd's SHA-256 trailer on `database`, as the member sends it.
    fn with_checksum(database: &[u8]) -> Vec<u8> {
        let mut snapshot = database.to_vec();
        snapshot.extend_from_slice(&Sha256::digest(database));
        snapshot
    }

    /// The gateway's stream for `database` as etcd 3.4 sends it: 32 KiB chunks with the bytes
    /// still to come (left out when 0), then the checksum.
    fn gateway_lines(database: &[u8]) -> Vec<String> {
        let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let mut lines = Vec::new();
        let mut sent = 0;
        for chunk in database.chunks(32 * 1024) {
            sent += chunk.len();
            let remaining = database.len() - sent;
            let mut result = json!({ "blob": encode(chunk) });
            if remaining > 0 {
                result["remaining_bytes"] = json!(remaining.to_string());
            }
            lines.push(json!({ "result": result }).to_string());
        }
        let checksum = Sha256::digest(database);
        lines.push(json!({ "result": { "blob": encode(&checksum) } }).to_string());
        lines
    }

    /// `text` as a body in frames of `frame` bytes, cutting messages anywhere.
    fn body_of(
        text: &str,
        frame: usize,
    ) -> impl hyper::body::Body<Data = Bytes, Error = Infallible> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = text
            .as_bytes()
            .chunks(frame)
            .map(|piece| Ok(Frame::data(Bytes::copy_from_slice(piece))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn decode_text(text: &str, frame: usize) -> (Result<Received, SnapshotError>, Vec<u8>) {
        let mut out = Vec::new();
        let received = receive(body_of(text, frame), &mut out, Path::new("test.db")).await;
        (received, out)
    }

    fn database(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn a_snapshot_that_would_fill_the_disk_is_not_taken() {
        let dir = Path::new("/var/lib/qb-agent/snapshots");
        let mib = 1u64 << 20;
        assert!(room(dir, 600 * mib, 80 * mib).is_ok());
        let refused = room(dir, 600 * mib, 100 * mib).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "/var/lib/qb-agent/snapshots has 600 MiB free, and a snapshot of this 100 MiB database needs 612 MiB there (with 512 MiB to spare)"
        );
    }

    #[tokio::test]
    async fn the_gateways_stream_decodes_whatever_its_frames() {
        let database = database(100_000);
        let expected = with_checksum(&database);
        let text = gateway_lines(&database).join("\n") + "\n";
        for frame in [1, 7, 4096, 65_536, text.len()] {
            let (received, out) = decode_text(&text, frame).await;
            assert_eq!(out, expected, "frames of {frame}");
            assert_eq!(
                received.unwrap(),
                Received {
                    size: expected.len() as u64,
                    sha256: Sha256Hex::try_from(hex::encode(Sha256::digest(&expected))).unwrap(),
                }
            );
        }
        // The last message may end without its newline.
        let (received, out) =
            decode_text(gateway_lines(&database).join("\r\n").as_str(), 999).await;
        assert_eq!(out, expected);
        assert_eq!(received.unwrap().size, expected.len() as u64);
    }

    #[tokio::test]
    async fn a_stream_that_ends_early_or_wrong_fails() {
        let database = database(100_000);
        let lines = gateway_lines(&database);

        // Cut after the first chunk: etcd said more was to come.
        let (received, _) = decode_text(&(lines[0].clone() + "\n"), 4096).await;
        let error = received.unwrap_err();
        assert!(
            matches!(error, SnapshotError::Incomplete { remaining } if remaining == 100_000 - 32 * 1024),
            "{error:?}"
        );

        // Every chunk of the database but not etcd's checksum.
        let (received, _) = decode_text(&lines[..lines.len() - 1].join("\n"), 4096).await;
        assert!(
            matches!(received, Err(SnapshotError::Checksum)),
            "{received:?}"
        );

        // A checksum that does not match.
        let mut wrong = lines.clone();
        *wrong.last_mut().unwrap() = json!({ "result": { "blob": base64::engine::general_purpose::STANDARD.encode([0u8; 32]) } }).to_string();
        let (received, _) = decode_text(&wrong.join("\n"), 4096).await;
        assert!(
            matches!(received, Err(SnapshotError::Checksum)),
            "{received:?}"
        );

        let (received, _) = decode_text("", 1).await;
        assert!(
            matches!(received, Err(SnapshotError::Empty)),
            "{received:?}"
        );

        // etcd's failure midway is its message.
        let failed = format!(
            "{}\n{}\n",
            lines[0],
            r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: server stopped","http_status":"Service Unavailable"}}"#
        );
        let (received, _) = decode_text(&failed, 100).await;
        let error = received.unwrap_err();
        assert_eq!(
            error.to_string(),
            "etcd failed the snapshot: etcdserver: server stopped"
        );

        let (received, _) = decode_text("<html>\n", 100).await;
        assert!(
            matches!(received, Err(SnapshotError::Decode(_))),
            "{received:?}"
        );
        let (received, _) = decode_text(r#"{"result":{"blob":"!!"}}"#, 100).await;
        assert!(
            matches!(received, Err(SnapshotError::Base64(_))),
            "{received:?}"
        );
        let (received, _) = decode_text("{}\n", 100).await;
        assert!(
            matches!(received, Err(SnapshotError::NoResult)),
            "{received:?}"
        );
        let endless = "x".repeat(MAX_MESSAGE_BYTES + 1);
        let (received, _) = decode_text(&endless, 64 * 1024).await;
        assert!(
            matches!(received, Err(SnapshotError::TooLong)),
            "{received:?}"
        );
    }

    /// `etcdctl snapshot status` of `file`, as JSON.
    fn etcdctl_status(file: &Path) -> serde_json::Value {
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "status", "-w", "json"])
            .arg(file)
            .output()
            .expect(
                "etcdctl is not installed: this test checks a snapshot with the real one \
                 (on Debian/Ubuntu: apt-get install etcd-client)",
            );
        assert!(
            output.status.success(),
            "etcdctl snapshot status: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// Puts `count` keys of 4 KiB each through the gateway.
    async fn put_keys(req: &EtcdRequest, count: usize) {
        let mut client = Client::connect(req).await.unwrap();
        let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        for i in 0..count {
            let value: Vec<u8> = (0..4096).map(|j| ((i * 31 + j * 7) % 256) as u8).collect();
            let key = format!("/qb/test/{i:04}");
            client
                .call(
                    "/v3/kv/put",
                    &json!({ "key": encode(key.as_bytes()), "value": encode(&value) }),
                )
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_snapshot_of_a_real_member_is_one_etcdctl_reads() {
        let dir = pki();
        let pki = dir.path();
        let (member, _) = Server::first(pki, "snap").await;
        let request = member.request(pki, EtcdOp::Snapshot { snapshot: 7 });
        put_keys(&request, 100).await;

        let state = tempfile::tempdir().unwrap();
        let snapshots = state.path().join("snapshots");
        // Leftovers of an agent that stopped midway, the same snapshot's among them.
        std::fs::create_dir_all(&snapshots).unwrap();
        std::fs::write(snapshots.join("7.db"), "half").unwrap();
        std::fs::write(snapshots.join("3.db"), "half").unwrap();

        let taken = take(&request, &snapshots, 7)
            .await
            .unwrap_or_else(|e| panic!("{}\n{}", qb_api::error_chain(&e), member.log_text()));
        assert_eq!(taken.path(), snapshots.join("7.db"));
        assert!(!snapshots.join("3.db").exists());
        let mode = std::fs::metadata(taken.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let bytes = std::fs::read(taken.path()).unwrap();
        assert_eq!(taken.size, bytes.len() as u64);
        assert!(taken.size > 400 * 1024, "100 keys of 4 KiB: {}", taken.size);
        assert_eq!(taken.sha256.as_str(), hex::encode(Sha256::digest(&bytes)));
        // 100 puts after the first revision.
        assert!(taken.revision >= 101, "{}", taken.revision);

        let status = etcdctl_status(taken.path());
        let revision = status["revision"].as_u64().unwrap();
        assert!(
            revision >= taken.revision,
            "{status} against {}",
            taken.revision
        );
        let keys = status["totalKey"].as_u64().unwrap();
        assert!((100..200).contains(&keys), "{status}");

        let path = taken.path().to_owned();
        drop(taken);
        assert!(!path.exists(), "the file goes with the snapshot");
    }

    #[tokio::test]
    async fn a_member_that_cannot_be_reached_leaves_no_file() {
        let dir = pki();
        let pki = dir.path();
        let file = |name: &str| pki.join(name).display().to_string();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let request = EtcdRequest {
            endpoint: format!("https://127.0.0.1:{port}"),
            ca_file: file("ca.crt"),
            cert_file: file("client.crt"),
            key_file: file("client.key"),
            op: EtcdOp::Snapshot { snapshot: 1 },
        };
        let snapshots = pki.join("snapshots");
        let error = take(&request, &snapshots, 1).await.unwrap_err();
        assert!(
            matches!(
                &error,
                SnapshotError::Etcd(EtcdError::Https(crate::https::HttpsError::Connect { .. }))
            ),
            "{error:?}"
        );
        assert_eq!(std::fs::read_dir(&snapshots).unwrap().count(), 0);
    }

    /// What the stand-in controller received.
    #[derive(Debug)]
    struct Upload {
        method: Method,
        path: String,
        headers: hyper::HeaderMap,
        body: Bytes,
    }

    /// A stand-in for the controller's snapshot endpoint over HTTP/2 (without TLS): answers
    /// the requests in turn with `answers`, then 204, and keeps what it received. The
    /// controller's own side of the upload is tested in the controller.
    async fn controller(
        answers: Vec<(StatusCode, &'static str)>,
    ) -> (String, Arc<Mutex<Vec<Upload>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let uploads = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        let received = uploads.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (uploads, answers) = (received.clone(), answers.clone());
                let service =
                    hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                        let (uploads, answers) = (uploads.clone(), answers.clone());
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            uploads.lock().unwrap().push(Upload {
                                method: parts.method,
                                path: parts.uri.path().to_owned(),
                                headers: parts.headers,
                                body,
                            });
                            let (status, problem) = answers
                                .lock()
                                .unwrap()
                                .next()
                                .unwrap_or((StatusCode::NO_CONTENT, ""));
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header(header::CONTENT_TYPE, "application/problem+json")
                                    .body(Full::new(Bytes::from(problem)))
                                    .unwrap(),
                            )
                        }
                    });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        (format!("http://{address}"), uploads)
    }

    /// A new HTTP/2 connection to `base` for each attempt, as the agent's link gives.
    async fn open(base: String) -> anyhow::Result<(String, SendRequest<Body>, ())> {
        let tcp = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await?;
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        Ok((base, sender, ()))
    }

    /// A snapshot file of `len` bytes in `dir`, as [`take`] leaves it.
    fn snapshot_file(dir: &Path, len: usize) -> (SnapshotFile, Vec<u8>) {
        let content = with_checksum(&database(len));
        let path = dir.join("9.db");
        std::fs::write(&path, &content).unwrap();
        let file = SnapshotFile {
            file: RemovedOnDrop(path),
            size: content.len() as u64,
            sha256: Sha256Hex::try_from(hex::encode(Sha256::digest(&content))).unwrap(),
            revision: 4242,
        };
        (file, content)
    }

    const PROBLEM_503: &str = r#"{"type":"urn:qb:problem:unavailable","title":"Service Unavailable","status":503,"detail":"the store is not answering","code":"unavailable"}"#;
    const PROBLEM_409: &str = r#"{"type":"urn:qb:problem:conflict","title":"Conflict","status":409,"detail":"snapshot 9 is stored already","code":"conflict"}"#;

    #[tokio::test]
    async fn the_upload_sends_the_file_as_it_is_and_tries_again_after_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        // More than a frame of the upload and more than the HTTP/2 windows.
        let (snapshot, content) = snapshot_file(dir.path(), 3 * CHUNK_BYTES + 12_345);
        let (base, uploads) =
            controller(vec![(StatusCode::SERVICE_UNAVAILABLE, PROBLEM_503)]).await;

        upload(&snapshot, 9, || open(base.clone())).await.unwrap();

        let uploads = uploads.lock().unwrap();
        assert_eq!(uploads.len(), 2, "a 503 is tried again");
        for upload in uploads.iter() {
            assert_eq!(upload.method, Method::PUT);
            assert_eq!(upload.path, format!("{SNAPSHOTS_PATH}/9"));
            let header = |name: &str| upload.headers.get(name).unwrap().to_str().unwrap();
            assert_eq!(header("content-length"), content.len().to_string());
            assert_eq!(header("content-type"), "application/octet-stream");
            assert_eq!(header(SNAPSHOT_SHA256_HEADER), snapshot.sha256.as_str());
            assert_eq!(header(SNAPSHOT_REVISION_HEADER), "4242");
            assert_eq!(
                header(qb_agent_proto::PROTOCOL_HEADER),
                qb_agent_proto::PROTOCOL_VERSION.to_string()
            );
            assert!(
                upload.body == content,
                "the body is the file, byte for byte"
            );
        }
    }

    #[tokio::test]
    async fn a_refusal_is_final_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let (snapshot, _) = snapshot_file(dir.path(), 1000);
        let (base, uploads) = controller(vec![(StatusCode::CONFLICT, PROBLEM_409)]).await;

        let error = upload(&snapshot, 9, || open(base.clone()))
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "the controller answered 409 Conflict: snapshot 9 is stored already"
        );
        assert_eq!(uploads.lock().unwrap().len(), 1, "a 4xx is not tried again");
    }

    #[tokio::test]
    async fn a_controller_that_stays_unreachable_is_tried_four_times() {
        let dir = tempfile::tempdir().unwrap();
        let (snapshot, _) = snapshot_file(dir.path(), 1000);
        let attempts = Arc::new(Mutex::new(0));
        let counted = attempts.clone();
        let error = upload_pausing(
            &snapshot,
            9,
            || {
                *counted.lock().unwrap() += 1;
                async {
                    Err::<(String, SendRequest<Body>, ()), _>(anyhow::anyhow!(
                        "not connected to the controller"
                    ))
                }
            },
            Duration::ZERO,
        )
        .await
        .unwrap_err();
        assert_eq!(*attempts.lock().unwrap(), 1 + UPLOAD_RETRIES);
        assert_eq!(
            error.to_string(),
            "reaching the controller: not connected to the controller"
        );
    }
}
