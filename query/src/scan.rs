//! Running a table scan: a blocking producer (RocksDB reads) on tokio's
//! blocking pool, feeding record batches to the query through a small
//! channel, so a scan streams instead of loading a whole table, and stops as
//! soon as the query no longer wants rows (limit reached, timeout, error).

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use mpreg_storage::Flow;
use tokio::sync::mpsc;

use crate::columns::{BATCH_ROWS, RowWriter, Value};

/// Batches in flight between a producer and the query.
const CHANNEL_BATCHES: usize = 2;

/// Where a producer writes its rows; batches are sent as they fill.
pub struct RowSink {
    writer: RowWriter,
    out: mpsc::Sender<Result<RecordBatch>>,
    /// Rows still wanted (`limit`), if bounded.
    remaining: Option<usize>,
    /// The query dropped its end of the channel: it wants no more rows.
    closed: bool,
}

impl RowSink {
    /// Whether the query reads any column of the rows (`count(*)` reads
    /// none: then a row's values need not be decoded).
    pub fn reads_columns(&self) -> bool {
        self.writer.has_columns()
    }

    /// Whether the query reads any of `columns` (positions in the table's
    /// column list): a row's other values need not be computed.
    pub fn reads_any(&self, columns: impl IntoIterator<Item = usize>) -> bool {
        columns.into_iter().any(|c| self.writer.reads(c))
    }

    /// Whether the query wants every row, not at most so many (`LIMIT`).
    pub fn wants_every_row(&self) -> bool {
        self.remaining.is_none()
    }

    /// Whether the query still wants rows.
    pub fn wants_more(&self) -> bool {
        self.remaining != Some(0) && !self.closed
    }

    /// Appends one row; [`Flow::Stop`] once the query wants no more.
    pub fn push(&mut self, values: &[Value<'_>]) -> Result<Flow> {
        if !self.wants_more() {
            return Ok(Flow::Stop);
        }
        self.writer.push(values)?;
        if let Some(remaining) = &mut self.remaining {
            *remaining -= 1;
        }
        if self.writer.rows() >= BATCH_ROWS || self.remaining == Some(0) {
            return self.flush();
        }
        Ok(Flow::Continue)
    }

    /// A second sink into the same stream, for a thread that writes some
    /// of the rows; `None` when the query wants at most so many rows
    /// (`LIMIT`): those come from one thread, in key order.
    pub fn fork(&self) -> Option<RowSink> {
        if !self.wants_every_row() {
            return None;
        }
        Some(RowSink {
            writer: self.writer.fresh(),
            out: self.out.clone(),
            remaining: None,
            closed: self.closed,
        })
    }

    /// Sends the rows still held, once the sink's thread has no more.
    pub fn finish(mut self) -> Result<()> {
        self.flush().map(|_| ())
    }

    fn flush(&mut self) -> Result<Flow> {
        if self.writer.rows() == 0 {
            return Ok(Flow::Continue);
        }
        let batch = self.writer.take()?;
        match self.out.blocking_send(Ok(batch)) {
            Ok(()) => Ok(Flow::Continue),
            Err(_) => {
                self.closed = true;
                Ok(Flow::Stop)
            }
        }
    }
}

/// Fills a sink with the rows of one scan; runs on a blocking thread.
pub type Producer = Arc<dyn Fn(&mut RowSink) -> Result<()> + Send + Sync>;

/// One partition of a table scan, as DataFusion's `StreamingTableExec` runs it.
pub struct BlockingScan {
    table: &'static str,
    writer_schema: SchemaRef,
    make_writer: Arc<dyn Fn() -> Result<RowWriter> + Send + Sync>,
    producer: Producer,
    limit: Option<usize>,
}

impl fmt::Debug for BlockingScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingScan")
            .field("table", &self.table)
            .field("limit", &self.limit)
            .finish()
    }
}

impl BlockingScan {
    /// A scan of `table` whose rows `producer` writes into writers made by
    /// `make_writer` (which fixes the projected schema).
    pub fn new(
        table: &'static str,
        make_writer: Arc<dyn Fn() -> Result<RowWriter> + Send + Sync>,
        producer: Producer,
        limit: Option<usize>,
    ) -> Result<Self> {
        let writer_schema = make_writer()?.schema().clone();
        Ok(BlockingScan {
            table,
            writer_schema,
            make_writer,
            producer,
            limit,
        })
    }
}

impl PartitionStream for BlockingScan {
    fn schema(&self) -> &SchemaRef {
        &self.writer_schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (out, mut batches) = mpsc::channel(CHANNEL_BATCHES);
        let make_writer = self.make_writer.clone();
        let producer = self.producer.clone();
        let limit = self.limit;
        let table = self.table;
        tokio::task::spawn_blocking(move || {
            let result = make_writer().and_then(|writer| {
                let mut sink = RowSink {
                    writer,
                    out: out.clone(),
                    remaining: limit,
                    closed: false,
                };
                producer(&mut sink)?;
                sink.flush().map(|_| ())
            });
            if let Err(e) = result {
                let e = DataFusionError::Context(format!("scan of table {table}"), Box::new(e));
                let _ = out.blocking_send(Err(e));
            }
        });
        let stream = futures_util::stream::poll_fn(move |cx| batches.poll_recv(cx));
        Box::pin(RecordBatchStreamAdapter::new(
            self.writer_schema.clone(),
            stream,
        ))
    }
}
