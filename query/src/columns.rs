//! Table columns: each table declares its columns once ([`Column`]); the
//! Arrow schema and the batch builders ([`RowWriter`]) both come from that
//! declaration, so a table cannot disagree with its own schema.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, ListBuilder, StringBuilder,
    TimestampMillisecondBuilder, UInt32Builder, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::error::{DataFusionError, Result};

/// Rows per record batch a scan produces.
pub const BATCH_ROWS: usize = 8192;

/// The SQL type of a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    TextList,
    /// UTC timestamp, millisecond precision.
    Time,
    U64,
    U32,
    F64,
    Bool,
}

/// One column of a table: name, type, and whether it can be NULL.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    pub nullable: bool,
}

impl Column {
    pub const fn new(name: &'static str, kind: Kind) -> Self {
        Column {
            name,
            kind,
            nullable: false,
        }
    }

    pub const fn nullable(name: &'static str, kind: Kind) -> Self {
        Column {
            name,
            kind,
            nullable: true,
        }
    }

    fn data_type(&self) -> DataType {
        match self.kind {
            Kind::Text => DataType::Utf8,
            Kind::TextList => DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
            Kind::Time => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            Kind::U64 => DataType::UInt64,
            Kind::U32 => DataType::UInt32,
            Kind::F64 => DataType::Float64,
            Kind::Bool => DataType::Boolean,
        }
    }
}

/// The Arrow schema of a column list.
pub fn schema(columns: &[Column]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(c.name, c.data_type(), c.nullable))
            .collect::<Vec<_>>(),
    ))
}

/// One cell, as a table hands it to [`RowWriter::push`].
pub enum Value<'a> {
    Text(&'a str),
    /// Text computed only when its column is selected.
    LazyText(&'a dyn Fn() -> String),
    TextList(&'a [String]),
    /// A list of text borrowed from a row decoded in place.
    StrList(&'a [&'a str]),
    /// Unix milliseconds.
    Time(u64),
    U64(u64),
    U32(u32),
    F64(f64),
    Bool(bool),
    Null,
}

enum Builder {
    Text(StringBuilder),
    TextList(ListBuilder<StringBuilder>),
    Time(TimestampMillisecondBuilder),
    U64(UInt64Builder),
    U32(UInt32Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
}

fn mismatch(column: &str, kind: Kind) -> DataFusionError {
    DataFusionError::Internal(format!(
        "column {column} ({kind:?}) got a value of another type"
    ))
}

fn append_list(builder: &mut ListBuilder<StringBuilder>, items: &[impl AsRef<str>]) {
    for item in items {
        builder.values().append_value(item);
    }
    builder.append(true);
}

fn millis(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

impl Builder {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::Text => Builder::Text(StringBuilder::new()),
            Kind::TextList => Builder::TextList(ListBuilder::new(StringBuilder::new())),
            Kind::Time => Builder::Time(TimestampMillisecondBuilder::new().with_timezone("UTC")),
            Kind::U64 => Builder::U64(UInt64Builder::new()),
            Kind::U32 => Builder::U32(UInt32Builder::new()),
            Kind::F64 => Builder::F64(Float64Builder::new()),
            Kind::Bool => Builder::Bool(BooleanBuilder::new()),
        }
    }

    fn append(&mut self, column: &Column, value: &Value<'_>) -> Result<()> {
        match (self, value) {
            (Builder::Text(b), Value::Text(v)) => b.append_value(v),
            (Builder::Text(b), Value::LazyText(f)) => b.append_value(f()),
            (Builder::TextList(b), Value::TextList(items)) => append_list(b, items),
            (Builder::TextList(b), Value::StrList(items)) => append_list(b, items),
            (Builder::Time(b), Value::Time(ms)) => b.append_value(millis(*ms)),
            (Builder::U64(b), Value::U64(v)) => b.append_value(*v),
            (Builder::U32(b), Value::U32(v)) => b.append_value(*v),
            (Builder::F64(b), Value::F64(v)) => b.append_value(*v),
            (Builder::Bool(b), Value::Bool(v)) => b.append_value(*v),
            (builder, Value::Null) if column.nullable => match builder {
                Builder::Text(b) => b.append_null(),
                Builder::TextList(b) => b.append_null(),
                Builder::Time(b) => b.append_null(),
                Builder::U64(b) => b.append_null(),
                Builder::U32(b) => b.append_null(),
                Builder::F64(b) => b.append_null(),
                Builder::Bool(b) => b.append_null(),
            },
            _ => return Err(mismatch(column.name, column.kind)),
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Text(b) => Arc::new(b.finish()),
            Builder::TextList(b) => Arc::new(b.finish()),
            Builder::Time(b) => Arc::new(b.finish()),
            Builder::U64(b) => Arc::new(b.finish()),
            Builder::U32(b) => Arc::new(b.finish()),
            Builder::F64(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
        }
    }
}

/// Builds record batches of the selected columns of a table, row by row.
pub struct RowWriter {
    columns: Vec<Column>,
    /// For each output column, its position in the table's column list.
    picks: Vec<usize>,
    builders: Vec<Builder>,
    schema: SchemaRef,
    rows: usize,
}

impl RowWriter {
    /// A writer of the columns `projection` (all when `None`) of `columns`.
    pub fn new(columns: &[Column], projection: Option<&[usize]>) -> Result<Self> {
        let picks: Vec<usize> = match projection {
            Some(picks) => picks.to_vec(),
            None => (0..columns.len()).collect(),
        };
        let table = schema(columns);
        let schema = Arc::new(table.project(&picks)?);
        Ok(RowWriter {
            builders: picks
                .iter()
                .map(|&i| Builder::new(columns[i].kind))
                .collect(),
            columns: columns.to_vec(),
            picks,
            schema,
            rows: 0,
        })
    }

    /// The schema of the batches this writer produces.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// A writer of the same columns, with no rows.
    pub fn fresh(&self) -> RowWriter {
        RowWriter {
            columns: self.columns.clone(),
            picks: self.picks.clone(),
            builders: self
                .picks
                .iter()
                .map(|&i| Builder::new(self.columns[i].kind))
                .collect(),
            schema: self.schema.clone(),
            rows: 0,
        }
    }

    /// Appends one row; `values` holds every column of the table, in order.
    pub fn push(&mut self, values: &[Value<'_>]) -> Result<()> {
        for (builder, &i) in self.builders.iter_mut().zip(&self.picks) {
            let column = &self.columns[i];
            let value = values
                .get(i)
                .ok_or_else(|| mismatch(column.name, column.kind))?;
            builder.append(column, value)?;
        }
        self.rows += 1;
        Ok(())
    }

    /// Whether the query reads column `column` (its position in the
    /// table's column list).
    pub fn reads(&self, column: usize) -> bool {
        self.picks.contains(&column)
    }

    /// Whether the query reads any column (`count(*)` reads none).
    pub fn has_columns(&self) -> bool {
        !self.picks.is_empty()
    }

    /// Rows pushed since the last [`RowWriter::take`].
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The rows pushed so far as one batch; the writer starts empty again.
    pub fn take(&mut self) -> Result<RecordBatch> {
        let arrays = self.builders.iter_mut().map(Builder::finish).collect();
        let options = RecordBatchOptions::new().with_row_count(Some(self.rows));
        self.rows = 0;
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            arrays,
            &options,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: [Column; 3] = [
        Column::new("name", Kind::Text),
        Column::nullable("at", Kind::Time),
        Column::new("tags", Kind::TextList),
    ];

    #[test]
    fn writes_projected_columns_and_nulls() {
        let mut writer = RowWriter::new(&COLUMNS, Some(&[2, 1])).expect("writer");
        let tags = vec!["a".to_string()];
        writer
            .push(&[Value::Text("x"), Value::Null, Value::TextList(&tags)])
            .expect("row");
        writer
            .push(&[Value::Text("y"), Value::Time(5), Value::TextList(&[])])
            .expect("row");
        let batch = writer.take().expect("batch");
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema().field(0).name(), "tags");
        assert_eq!(batch.column(1).null_count(), 1);
        assert_eq!(writer.rows(), 0);
    }

    #[test]
    fn refuses_a_value_of_the_wrong_type_or_a_null_in_a_required_column() {
        let mut writer = RowWriter::new(&COLUMNS, None).expect("writer");
        let err = writer
            .push(&[Value::U64(1), Value::Null, Value::TextList(&[])])
            .expect_err("type mismatch");
        assert!(err.to_string().contains("column name"), "{err}");
        let mut writer = RowWriter::new(&COLUMNS, None).expect("writer");
        assert!(
            writer
                .push(&[Value::Null, Value::Null, Value::TextList(&[])])
                .is_err()
        );
    }

    #[test]
    fn an_empty_projection_still_counts_rows() {
        let mut writer = RowWriter::new(&COLUMNS, Some(&[])).expect("writer");
        writer
            .push(&[Value::Text("x"), Value::Null, Value::TextList(&[])])
            .expect("row");
        assert_eq!(writer.take().expect("batch").num_rows(), 1);
    }
}
