//! The Kinesis edge: builds the SDK client from the configuration and turns a
//! PutRecords call into the queue's [`CallOutcome`].
//!
//! SDK retries are off: a retry of the whole call would resend records Kinesis already
//! accepted. The shipper retries itself, per record.

use super::config::{KinesisConfig, PartitionKey};
use super::queue::{CallOutcome, QueuedRecord, RecordResult};
use super::request::RequestEntry;
use crate::buffer::StoredRecord;
use aws_sdk_kinesis::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_kinesis::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_kinesis::error::{BoxError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::operation::put_records::PutRecordsError;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use linewatch_runtime::aws::{AwsError, AwsTimeouts};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The one operation the shipper needs; implemented by [`KinesisClient`] and by test fakes.
pub trait PutRecordsApi: Send + Sync + 'static {
    /// Stream name, for logs.
    fn stream(&self) -> &str;
    /// Sends `entries` in one PutRecords call. Never fails: every failure is an
    /// outcome, and a per-entry answer has one result per entry, in request order.
    fn put_records(&self, entries: &[RequestEntry]) -> impl Future<Output = CallOutcome> + Send;
    /// The stream's open shards, for pacing (`kinesis.shards = "auto"`). An error
    /// (e.g. the gateway's role may only PutRecords) leaves the shipper unpaced.
    fn open_shards(&self) -> impl Future<Output = Result<u32, String>> + Send;
}

/// A Kinesis client bound to one stream.
#[derive(Clone)]
pub struct KinesisClient {
    client: aws_sdk_kinesis::Client,
    stream: String,
}

impl std::fmt::Debug for KinesisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KinesisClient")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl KinesisClient {
    /// Region, endpoint and credentials from `cfg.aws` (the runtime's loader: the
    /// standard AWS chain for what is absent, SDK retries off, `request_timeout` on
    /// every call with at most 3 s of it for connecting). Makes no call to AWS.
    pub async fn from_config(cfg: &KinesisConfig) -> Result<Self, AwsError> {
        let sdk = cfg
            .aws
            .load("kinesis", AwsTimeouts::per_call(cfg.request_timeout))
            .await?;
        Ok(KinesisClient {
            client: aws_sdk_kinesis::Client::new(&sdk),
            stream: cfg.stream.clone(),
        })
    }

    /// Wraps an SDK client built elsewhere (it should have retries disabled).
    pub fn from_sdk(client: aws_sdk_kinesis::Client, stream: impl Into<String>) -> Self {
        KinesisClient {
            client,
            stream: stream.into(),
        }
    }

    /// The SDK client, e.g. for tests that create or read the stream.
    pub fn sdk(&self) -> &aws_sdk_kinesis::Client {
        &self.client
    }
}

impl PutRecordsApi for KinesisClient {
    fn stream(&self) -> &str {
        &self.stream
    }

    async fn put_records(&self, entries: &[RequestEntry]) -> CallOutcome {
        let entries = match request_entries(entries) {
            Ok(e) => e,
            Err(e) => {
                return CallOutcome::NotWritten {
                    throttled: false,
                    error: e.to_string(),
                }
            }
        };
        let transmit = TransmitMarker::default();
        let result = self
            .client
            .put_records()
            .stream_name(&self.stream)
            .set_records(Some(entries))
            .customize()
            .interceptor(transmit.clone())
            .send()
            .await;
        match result {
            Ok(out) => CallOutcome::Records(
                out.records()
                    .iter()
                    .map(|r| classify_record(r.error_code()))
                    .collect(),
            ),
            Err(err) => classify_error(&err, transmit.reached()),
        }
    }

    async fn open_shards(&self) -> Result<u32, String> {
        let out = self
            .client
            .describe_stream_summary()
            .stream_name(&self.stream)
            .send()
            .await
            .map_err(|e| linewatch_runtime::error::chain(&e))?;
        let count = out
            .stream_description_summary()
            .map(|d| d.open_shard_count())
            .ok_or("DescribeStreamSummary answered without a summary")?;
        u32::try_from(count).map_err(|_| format!("open shard count {count}"))
    }
}

/// The SDK's entries of one call (data copied: the queue keeps its copy for retries).
pub fn request_entries(
    entries: &[RequestEntry],
) -> Result<Vec<PutRecordsRequestEntry>, aws_sdk_kinesis::error::BuildError> {
    entries
        .iter()
        .map(|e| {
            PutRecordsRequestEntry::builder()
                .data(Blob::new(e.data()))
                .partition_key(e.partition_key())
                .build()
        })
        .collect()
}

/// A per-record `ErrorCode` of a successful call.
pub fn classify_record(error_code: Option<&str>) -> RecordResult {
    match error_code {
        None => RecordResult::Accepted,
        Some("ProvisionedThroughputExceededException") => RecordResult::Throttled,
        Some("InternalFailure") => RecordResult::InternalFailure,
        Some(code) => RecordResult::Failed {
            code: code.to_owned(),
        },
    }
}

/// Error codes that mean "too fast, nothing written" for a whole call.
const THROTTLING_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "KMSThrottlingException",
    "LimitExceededException",
    "ThrottlingException",
    "Throttling",
    "RequestLimitExceeded",
    "TooManyRequestsException",
];

/// A service error answer: 4xx means the request was refused as a whole; a 5xx may
/// come after Kinesis wrote part of the call, so its outcome is unknown.
pub fn classify_service_error(status: u16, code: Option<&str>, error: String) -> CallOutcome {
    let throttled = status == 429 || code.is_some_and(|c| THROTTLING_CODES.contains(&c));
    if throttled || (400..500).contains(&status) {
        CallOutcome::NotWritten { throttled, error }
    } else {
        CallOutcome::Unknown { error }
    }
}

/// Set by the SDK just before the request goes to the HTTP client: a call that failed
/// without it (credentials missing, signing or endpoint errors) sent nothing, whatever
/// kind of error the SDK wraps that in (it reports them as dispatch failures).
#[derive(Debug, Clone, Default)]
pub struct TransmitMarker(Arc<AtomicBool>);

impl TransmitMarker {
    pub fn reached(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl Intercept for TransmitMarker {
    fn name(&self) -> &'static str {
        "TransmitMarker"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// A failed call: was anything written? `transmitted`: the request reached the HTTP
/// client ([`TransmitMarker`]); before that nothing can have been written.
pub fn classify_error(err: &SdkError<PutRecordsError>, transmitted: bool) -> CallOutcome {
    let error = DisplayErrorContext(err).to_string();
    if !transmitted && !matches!(err, SdkError::ServiceError(_) | SdkError::ResponseError(_)) {
        return CallOutcome::NotWritten {
            throttled: false,
            error,
        };
    }
    match err {
        // Never left the process.
        SdkError::ConstructionFailure(_) => CallOutcome::NotWritten {
            throttled: false,
            error,
        },
        SdkError::DispatchFailure(_) if never_connected(err) => CallOutcome::NotWritten {
            throttled: false,
            error,
        },
        SdkError::ServiceError(ctx) => {
            classify_service_error(ctx.raw().status().as_u16(), ctx.err().code(), error)
        }
        // Timeouts, dropped connections, unreadable responses: may have been written.
        _ => CallOutcome::Unknown { error },
    }
}

/// True when the error chain shows the connection was never made (nothing was sent).
fn never_connected(err: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::*;
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                ConnectionRefused | AddrNotAvailable | NetworkUnreachable | HostUnreachable
            ) {
                return true;
            }
            // io::Error::source skips its payload; look at the payload too.
            if let Some(inner) = io.get_ref() {
                if never_connected(inner) {
                    return true;
                }
            }
        }
        next = e.source();
    }
    false
}

/// The partition key a record is sent under.
pub fn partition_key(record: &StoredRecord, mode: PartitionKey, rng: &mut fastrand::Rng) -> String {
    match mode {
        PartitionKey::EquipmentId => record.partition_key.clone(),
        // 128 random bits: spreads evenly over the MD5 hash-key space of the shards.
        PartitionKey::Random => format!("{:032x}", rng.u128(..)),
    }
}

/// A record as the shipper queues it, under the configured key mode.
pub fn queued_record(
    record: StoredRecord,
    mode: PartitionKey,
    rng: &mut fastrand::Rng,
) -> QueuedRecord {
    let key = partition_key(&record, mode, rng);
    QueuedRecord::with_key(record, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kinesis::error::ConnectorError;
    use std::sync::Arc;
    use std::time::Duration;

    fn stored(key: &str) -> StoredRecord {
        StoredRecord {
            id: 1,
            created_at: 0,
            partition_key: key.into(),
            data: b"{}".to_vec(),
        }
    }

    #[test]
    fn record_error_codes() {
        assert_eq!(classify_record(None), RecordResult::Accepted);
        assert_eq!(
            classify_record(Some("ProvisionedThroughputExceededException")),
            RecordResult::Throttled
        );
        assert_eq!(
            classify_record(Some("InternalFailure")),
            RecordResult::InternalFailure
        );
        assert_eq!(
            classify_record(Some("KMSThrottlingException")),
            RecordResult::Failed {
                code: "KMSThrottlingException".into()
            }
        );
    }

    #[test]
    fn service_errors_4xx_are_not_written_5xx_unknown() {
        let e = || "e".to_string();
        assert_eq!(
            classify_service_error(400, Some("ResourceNotFoundException"), e()),
            CallOutcome::NotWritten {
                throttled: false,
                error: e()
            }
        );
        assert_eq!(
            classify_service_error(400, Some("ProvisionedThroughputExceededException"), e()),
            CallOutcome::NotWritten {
                throttled: true,
                error: e()
            }
        );
        assert_eq!(
            classify_service_error(429, None, e()),
            CallOutcome::NotWritten {
                throttled: true,
                error: e()
            }
        );
        assert_eq!(
            classify_service_error(500, Some("InternalFailure"), e()),
            CallOutcome::Unknown { error: e() }
        );
        assert_eq!(
            classify_service_error(503, None, e()),
            CallOutcome::Unknown { error: e() }
        );
    }

    #[test]
    fn transport_errors() {
        let refused = SdkError::<PutRecordsError>::dispatch_failure(ConnectorError::io(Box::new(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        )));
        assert!(matches!(
            classify_error(&refused, true),
            CallOutcome::NotWritten {
                throttled: false,
                ..
            }
        ));

        // Wrapped the way hyper wraps it: still found.
        let wrapped =
            std::io::Error::other(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let refused =
            SdkError::<PutRecordsError>::dispatch_failure(ConnectorError::io(Box::new(wrapped)));
        assert!(matches!(
            classify_error(&refused, true),
            CallOutcome::NotWritten { .. }
        ));

        let reset = SdkError::<PutRecordsError>::dispatch_failure(ConnectorError::io(Box::new(
            std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        )));
        assert!(matches!(
            classify_error(&reset, true),
            CallOutcome::Unknown { .. }
        ));

        let timeout = SdkError::<PutRecordsError>::timeout_error("operation timed out");
        assert!(matches!(
            classify_error(&timeout, true),
            CallOutcome::Unknown { .. }
        ));

        let construction = SdkError::<PutRecordsError>::construction_failure("bad input");
        assert!(matches!(
            classify_error(&construction, true),
            CallOutcome::NotWritten { .. }
        ));
    }

    #[test]
    fn partition_keys() {
        let mut rng = fastrand::Rng::with_seed(3);
        let r = stored("84068f2f-3f39-4b9c-a995-d2a84d878689");
        assert_eq!(
            partition_key(&r, PartitionKey::EquipmentId, &mut rng),
            r.partition_key
        );
        let a = partition_key(&r, PartitionKey::Random, &mut rng);
        let b = partition_key(&r, PartitionKey::Random, &mut rng);
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        let q = queued_record(r.clone(), PartitionKey::Random, &mut rng);
        assert_eq!(q.record, r, "the stored record keeps its own key");
        assert_ne!(q.partition_key, r.partition_key);
    }

    #[test]
    fn entries_carry_data_and_key() {
        let entries = vec![
            RequestEntry::single(Arc::new(QueuedRecord::new(stored("eq-1")))),
            RequestEntry::encoded("eq-2".into(), b"[1,2]".to_vec(), vec![4, 6]),
        ];
        let sdk = request_entries(&entries).unwrap();
        assert_eq!(sdk[0].partition_key(), Some("eq-1"));
        assert_eq!(sdk[0].data().as_ref(), b"{}");
        assert_eq!(sdk[1].partition_key(), Some("eq-2"));
        assert_eq!(sdk[1].data().as_ref(), b"[1,2]");
    }

    #[tokio::test]
    async fn static_config_builds_without_the_environment() {
        let cfg: KinesisConfig = toml::from_str(
            r#"stream = "s"
               region = "eu-central-1"
               endpoint_url = "http://127.0.0.1:1"
               access_key_id = "AKIDEXAMPLE"
               secret_access_key = "secret""#,
        )
        .unwrap();
        let client = KinesisClient::from_config(&cfg).await.unwrap();
        assert_eq!(client.stream(), "s");
        assert!(!format!("{client:?}").contains("secret"));
        // Port 1 refuses: the call is known not written, and fails fast (no SDK retries).
        let entries = vec![RequestEntry::single(Arc::new(QueuedRecord::new(stored(
            "eq-1",
        ))))];
        let started = std::time::Instant::now();
        let outcome = client.put_records(&entries).await;
        assert!(
            matches!(outcome, CallOutcome::NotWritten { .. }),
            "{outcome:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn nothing_is_written_before_the_request_reached_the_http_client() {
        // How the SDK reports a missing identity or a signing failure: a dispatch
        // failure of kind "other", which after transmit would be an unknown outcome.
        let other = || {
            SdkError::<PutRecordsError>::dispatch_failure(ConnectorError::other(
                "no credentials".into(),
                None,
            ))
        };
        assert!(matches!(
            classify_error(&other(), false),
            CallOutcome::NotWritten {
                throttled: false,
                ..
            }
        ));
        assert!(matches!(
            classify_error(&other(), true),
            CallOutcome::Unknown { .. }
        ));
        let timeout = SdkError::<PutRecordsError>::timeout_error("operation timed out");
        assert!(matches!(
            classify_error(&timeout, false),
            CallOutcome::NotWritten { .. }
        ));
    }

    /// Missing credentials: the SDK gives up before connecting. The call is
    /// "not written", and the endpoint (a listener on 127.0.0.1) saw no connection.
    #[tokio::test]
    async fn a_call_without_credentials_is_not_written_and_never_connects() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let conf = aws_sdk_kinesis::Config::builder()
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .region(aws_sdk_kinesis::config::Region::new("eu-central-1"))
            .endpoint_url(format!("http://{addr}"))
            .build();
        let client = KinesisClient::from_sdk(aws_sdk_kinesis::Client::from_conf(conf), "s");
        let entry = RequestEntry::encoded("eq".into(), b"{}".to_vec(), vec![1]);
        let outcome = client.put_records(&[entry]).await;
        let CallOutcome::NotWritten { throttled, error } = outcome else {
            panic!("expected not written: {outcome:?}");
        };
        assert!(!throttled, "{error}");
        // A connection made during the call would wait in the backlog by now.
        let accepted = listener.accept();
        assert!(
            matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "no connection was made: {accepted:?}"
        );
    }
}
