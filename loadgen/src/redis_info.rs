//! Redis memory without a Redis client: one TCP connection, the inline
//! command `INFO memory`, its RESP bulk-string reply (`$<len>\r\n<bytes>\r\n`)
//! and the `used_memory:<n>` line in it. Read before setup, after setup and
//! at the end of the ingest phase, it prices one live activity in Redis
//! bytes (recent-position stream and live-registry entries).

use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connect, send and read, all within this.
const TIMEOUT: Duration = Duration::from_secs(5);
/// An `INFO memory` reply is about 1.5 KB; refuse anything absurd.
const MAX_REPLY: usize = 1 << 20;

/// Host and port of a `redis://` URL on this machine (127.0.0.1, localhost
/// or [::1]); the database number, if any, is irrelevant to `INFO`.
pub fn address(url: &str) -> anyhow::Result<(String, u16)> {
    let parsed = reqwest::Url::parse(url).context("--redis-info is not a URL")?;
    ensure!(
        parsed.scheme() == "redis",
        "--redis-info must be a redis:// URL, not {url:?}"
    );
    ensure!(
        parsed.username().is_empty() && parsed.password().is_none(),
        "--redis-info: credentials are not supported"
    );
    let host = match parsed.host_str() {
        Some(h @ ("127.0.0.1" | "localhost")) => h.to_string(),
        Some("[::1]") => "::1".to_string(),
        other => bail!("--redis-info must be on this machine (127.0.0.1), not {other:?}"),
    };
    Ok((host, parsed.port().unwrap_or(6379)))
}

/// `used_memory` of the Redis at `url`, in bytes.
pub async fn used_memory(url: &str) -> anyhow::Result<u64> {
    let (host, port) = address(url)?;
    let info = tokio::time::timeout(TIMEOUT, info_memory(&host, port))
        .await
        .map_err(|_| anyhow!("{url}: no INFO reply within {TIMEOUT:?}"))??;
    used_memory_of(&info).ok_or_else(|| anyhow!("{url}: INFO memory has no used_memory line"))
}

async fn info_memory(host: &str, port: u16) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect((host, port))
        .await
        .with_context(|| format!("connecting to Redis at {host}:{port}"))?;
    stream.write_all(b"INFO memory\r\n").await?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        if let Some(body) = bulk_string(&buf)? {
            return Ok(String::from_utf8_lossy(body).into_owned());
        }
        ensure!(buf.len() < MAX_REPLY, "Redis reply over {MAX_REPLY} bytes");
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("Redis closed the connection after {} bytes", buf.len());
        }
    }
}

/// The payload of a complete RESP bulk string at the start of `buf`, `None`
/// while more bytes are needed; an error reply (`-ERR …`, `-NOAUTH …`), a
/// null bulk string or anything else is an error.
pub fn bulk_string(buf: &[u8]) -> anyhow::Result<Option<&[u8]>> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let header = std::str::from_utf8(&buf[..eol]).context("RESP header is not text")?;
    if let Some(message) = header.strip_prefix('-') {
        bail!("Redis answered an error: {message}");
    }
    let len = header
        .strip_prefix('$')
        .ok_or_else(|| anyhow!("expected a RESP bulk string, got {header:?}"))?;
    let len: i64 = len
        .parse()
        .with_context(|| format!("bad bulk length {len:?}"))?;
    ensure!(len >= 0, "Redis answered a null bulk string");
    let (start, len) = (eol + 2, len as usize);
    ensure!(len <= MAX_REPLY, "bulk string of {len} bytes");
    if buf.len() < start + len + 2 {
        return Ok(None);
    }
    ensure!(
        &buf[start + len..start + len + 2] == b"\r\n",
        "bulk string not terminated by CRLF"
    );
    Ok(Some(&buf[start..start + len]))
}

/// The `used_memory:<n>` field of an `INFO` reply (not `used_memory_rss`
/// or the other `used_memory_*` fields).
pub fn used_memory_of(info: &str) -> Option<u64> {
    info.lines().find_map(|line| {
        let (key, value) = line.trim_end_matches('\r').split_once(':')?;
        (key == "used_memory").then(|| value.trim().parse().ok())?
    })
}

/// Redis memory over the run, per live activity.
#[derive(Debug, Clone, Serialize)]
pub struct RedisMemory {
    pub url: String,
    pub before_setup_bytes: u64,
    pub after_setup_bytes: Option<u64>,
    /// At the end of the ingest phase, the activities still live.
    pub after_run_bytes: Option<u64>,
    /// (after setup − before) / athletes: the live registry's share.
    pub bytes_per_activity_after_setup: Option<f64>,
    /// (after run − before) / athletes: registry plus recent positions.
    pub bytes_per_activity: Option<f64>,
    /// Why a later reading is missing (no ingest phase, Redis gone).
    pub error: Option<String>,
}

impl RedisMemory {
    pub fn new(
        url: &str,
        before: u64,
        after_setup: anyhow::Result<u64>,
        after_run: Option<anyhow::Result<u64>>,
        athletes: usize,
    ) -> RedisMemory {
        let per = |after: u64| (after as f64 - before as f64) / athletes.max(1) as f64;
        let mut error = None;
        let after_setup = after_setup.map_err(|e| error = Some(format!("{e:#}"))).ok();
        let after_run = match after_run {
            Some(r) => r.map_err(|e| error = Some(format!("{e:#}"))).ok(),
            None => {
                error.get_or_insert_with(|| "no ingest phase".to_string());
                None
            }
        };
        RedisMemory {
            url: url.to_string(),
            before_setup_bytes: before,
            after_setup_bytes: after_setup,
            after_run_bytes: after_run,
            bytes_per_activity_after_setup: after_setup.map(per),
            bytes_per_activity: after_run.map(per),
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Memory\r\nused_memory:1032880\r\nused_memory_human:1008.67K\r\n\
                        used_memory_rss:14290944\r\nused_memory_peak:1093504\r\n";

    fn reply(body: &str) -> Vec<u8> {
        format!("${}\r\n{body}\r\n", body.len()).into_bytes()
    }

    #[test]
    fn reads_a_bulk_string_once_complete() {
        let whole = reply(INFO);
        for cut in 0..whole.len() {
            assert!(
                bulk_string(&whole[..cut]).unwrap().is_none(),
                "incomplete at {cut}"
            );
        }
        assert_eq!(bulk_string(&whole).unwrap(), Some(INFO.as_bytes()));
        // A body holding CRLFs and "$" is taken by its length, not scanned.
        let tricky = reply("a\r\n$3\r\nb");
        assert_eq!(
            bulk_string(&tricky).unwrap(),
            Some("a\r\n$3\r\nb".as_bytes())
        );
    }

    #[test]
    fn refuses_errors_nulls_and_other_replies() {
        let e = bulk_string(b"-NOAUTH Authentication required.\r\n").unwrap_err();
        assert!(e.to_string().contains("NOAUTH"), "{e}");
        assert!(bulk_string(b"$-1\r\n").is_err());
        assert!(bulk_string(b"+OK\r\n").is_err());
        assert!(bulk_string(b"$x\r\n").is_err());
        assert!(bulk_string(b"$3\r\nabcXY").is_err());
    }

    #[test]
    fn finds_used_memory_not_its_relatives() {
        assert_eq!(used_memory_of(INFO), Some(1_032_880));
        assert_eq!(
            used_memory_of("used_memory_rss:5\nused_memory:7\n"),
            Some(7)
        );
        assert_eq!(used_memory_of("used_memory_rss:5\r\n"), None);
        assert_eq!(used_memory_of(""), None);
    }

    #[test]
    fn only_local_redis_urls() {
        assert_eq!(
            address("redis://127.0.0.1:6379").unwrap(),
            ("127.0.0.1".into(), 6379)
        );
        assert_eq!(
            address("redis://localhost/2").unwrap(),
            ("localhost".into(), 6379)
        );
        assert_eq!(address("redis://[::1]:7000").unwrap(), ("::1".into(), 7000));
        assert!(address("redis://10.0.0.9:6379").is_err());
        assert!(address("http://127.0.0.1:6379").is_err());
        assert!(address("redis://:secret@127.0.0.1:6379").is_err());
    }

    #[test]
    fn per_activity_is_the_delta_over_athletes() {
        let m = RedisMemory::new("redis://127.0.0.1", 1000, Ok(3000), Some(Ok(11_000)), 10);
        assert_eq!(m.bytes_per_activity_after_setup, Some(200.0));
        assert_eq!(m.bytes_per_activity, Some(1000.0));
        assert!(m.error.is_none());
        let m = RedisMemory::new("redis://127.0.0.1", 1000, Ok(3000), None, 10);
        assert_eq!(m.bytes_per_activity, None);
        assert_eq!(m.error.as_deref(), Some("no ingest phase"));
    }

    /// Against the Redis the suite runs with (scripts/test starts one).
    #[tokio::test]
    async fn the_local_redis_reports_its_memory() {
        let url = "redis://127.0.0.1:6379";
        let used = used_memory(url).await.unwrap_or_else(|e| {
            panic!(
                "no Redis answered INFO at {url}: {e:#}. scripts/test starts one \
                 (redis-server on 127.0.0.1:6379); start it and rerun"
            )
        });
        assert!(used > 0, "used_memory is {used}");
    }
}
