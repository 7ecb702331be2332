//! Result encodings: JSON (array of objects), CSV, Arrow IPC stream, and an
//! aligned text table for terminals.

use std::str::FromStr;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringBuilder};
use datafusion::arrow::csv;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::json::{WriterBuilder, writer::JsonArray};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::arrow::util::pretty::pretty_format_batches_with_schema;

use crate::engine::QueryOutput;

/// How a result is encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// A JSON array of objects, one per row, every column present.
    #[default]
    Json,
    /// CSV with a header row; list values as `[a, b]`.
    Csv,
    /// An Arrow IPC stream.
    Arrow,
    /// An aligned text table.
    Table,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            "arrow" => Ok(Format::Arrow),
            "table" => Ok(Format::Table),
            other => Err(format!(
                "unknown format {other:?}: use json, csv, arrow or table"
            )),
        }
    }
}

impl Format {
    /// The HTTP content type of the encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
            Format::Table => "text/plain; charset=utf-8",
        }
    }
}

/// Encodes a query result.
pub fn encode(format: Format, output: &QueryOutput) -> Result<Vec<u8>, ArrowError> {
    match format {
        Format::Json => json(&output.batches),
        Format::Csv => csv(output),
        Format::Arrow => arrow_ipc(&output.schema, &output.batches),
        Format::Table => Ok(table(&output.schema, &output.batches)?.into_bytes()),
    }
}

fn json(batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, JsonArray>(Vec::new());
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    let mut body = writer.into_inner();
    if body.is_empty() {
        body.extend_from_slice(b"[]");
    }
    body.push(b'\n');
    Ok(body)
}

/// The column as text, for encodings without nested types.
fn as_text(array: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    let formatter = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?;
    let mut text = StringBuilder::new();
    for row in 0..array.len() {
        if array.is_null(row) {
            text.append_null();
        } else {
            text.append_value(formatter.value(row).to_string());
        }
    }
    Ok(Arc::new(text.finish()))
}

/// The batches with nested columns (lists) turned into text.
fn flatten_nested(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
    if !schema.fields().iter().any(|f| f.data_type().is_nested()) {
        return Ok((schema.clone(), batches.to_vec()));
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if f.data_type().is_nested() {
                Field::new(f.name(), DataType::Utf8, true)
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    let flat = Arc::new(Schema::new(fields));
    let batches = batches
        .iter()
        .map(|batch| {
            let columns = batch
                .columns()
                .iter()
                .map(|c| {
                    if c.data_type().is_nested() {
                        as_text(c)
                    } else {
                        Ok(c.clone())
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            RecordBatch::try_new(flat.clone(), columns)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((flat, batches))
}

fn csv(output: &QueryOutput) -> Result<Vec<u8>, ArrowError> {
    let (schema, batches) = flatten_nested(&output.schema, &output.batches)?;
    let mut body = Vec::new();
    if batches.is_empty() {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        body.extend_from_slice(names.join(",").as_bytes());
        body.push(b'\n');
        return Ok(body);
    }
    let mut writer = csv::WriterBuilder::new().with_header(true).build(&mut body);
    for batch in &batches {
        writer.write(batch)?;
    }
    drop(writer);
    Ok(body)
}

fn arrow_ipc(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let mut writer = StreamWriter::try_new(Vec::new(), schema)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    writer.into_inner()
}

/// An aligned text table of the rows (header only when there are none).
pub fn table(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<String, ArrowError> {
    let mut text = pretty_format_batches_with_schema(schema.clone(), batches)?.to_string();
    text.push('\n');
    Ok(text)
}

/// Reads an Arrow IPC stream (as `format=arrow` returns) back into batches.
pub fn read_arrow_ipc(body: &[u8]) -> Result<QueryOutput, ArrowError> {
    let reader = StreamReader::try_new(body, None)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    Ok(QueryOutput { schema, batches })
}
