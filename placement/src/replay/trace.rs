//! Loading the openb CSV format (Alibaba cluster-trace-gpu-v2023): the only
//! file reading in the crate. Every row is validated; errors name the file
//! position and the field.

use std::io::Read;
use std::path::Path;

use thiserror::Error;

/// Errors of loading a trace.
#[derive(Debug, Error)]
pub enum TraceError {
    #[error("{path}: {error}")]
    Open { path: String, error: std::io::Error },
    #[error("line {line}: {source}")]
    Csv { line: u64, source: csv::Error },
    #[error("missing column {0:?} in the header")]
    MissingColumn(&'static str),
    #[error("line {line}, column {column}: {reason}")]
    Field { line: u64, column: &'static str, reason: String },
    #[error("the trace has no {0}")]
    Empty(&'static str),
}

/// One node of the trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceNode {
    pub name: String,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpus: u32,
    pub model: String,
}

/// One task of the trace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraceTask {
    pub name: String,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    /// GPUs (0, 1, 2, 4, 8).
    pub num_gpu: u32,
    /// Share of each GPU in thousandths (< 1000 only with one GPU).
    pub gpu_milli: u32,
    /// Allowed models; empty = any.
    pub gpu_spec: Vec<String>,
}

impl TraceTask {
    /// GPUs requested, in thousandths.
    pub fn gpu_milli_total(&self) -> u64 {
        u64::from(self.num_gpu) * u64::from(self.gpu_milli)
    }
}

/// Reads a node list file.
pub fn load_nodes(path: &Path) -> Result<Vec<TraceNode>, TraceError> {
    parse_nodes(open(path)?)
}

/// Reads a pod (task) list file.
pub fn load_tasks(path: &Path) -> Result<Vec<TraceTask>, TraceError> {
    parse_tasks(open(path)?)
}

/// Parses a node list (`sn,cpu_milli,memory_mib,gpu,model`).
pub fn parse_nodes(input: impl Read) -> Result<Vec<TraceNode>, TraceError> {
    let mut rdr = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(input);
    let cols = Columns::new(&mut rdr, &["sn", "cpu_milli", "memory_mib", "gpu", "model"])?;
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| TraceError::Csv { line: line_of(&e), source: e })?;
        let line = rec.position().map_or(0, |p| p.line());
        let gpus = cols.num(&rec, line, 3, "gpu")?;
        if gpus > 64 {
            return Err(field(line, "gpu", format!("{gpus} GPUs on one node is more than 64")));
        }
        out.push(TraceNode {
            name: cols.text(&rec, 0).to_string(),
            cpu_milli: cols.num(&rec, line, 1, "cpu_milli")?,
            memory_mib: cols.num(&rec, line, 2, "memory_mib")?,
            gpus: gpus as u32,
            model: cols.text(&rec, 4).to_string(),
        });
    }
    if out.is_empty() {
        return Err(TraceError::Empty("nodes"));
    }
    Ok(out)
}

/// Parses a pod list (`name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]`).
pub fn parse_tasks(input: impl Read) -> Result<Vec<TraceTask>, TraceError> {
    let mut rdr = csv::ReaderBuilder::new().trim(csv::Trim::All).flexible(true).from_reader(input);
    let cols = Columns::new(&mut rdr, &["name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli"])?;
    let spec_col = rdr
        .headers()
        .map_err(|e| TraceError::Csv { line: 1, source: e })?
        .iter()
        .position(|h| h == "gpu_spec");
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| TraceError::Csv { line: line_of(&e), source: e })?;
        let line = rec.position().map_or(0, |p| p.line());
        let num_gpu = cols.num(&rec, line, 3, "num_gpu")?;
        let gpu_milli = cols.num(&rec, line, 4, "gpu_milli")?;
        if num_gpu > 8 {
            return Err(field(line, "num_gpu", format!("{num_gpu} is more than 8")));
        }
        if gpu_milli > 1000 {
            return Err(field(line, "gpu_milli", format!("{gpu_milli} is more than 1000")));
        }
        if (num_gpu == 0) != (gpu_milli == 0) {
            return Err(field(line, "gpu_milli", format!("{gpu_milli} does not match num_gpu {num_gpu}")));
        }
        if num_gpu > 1 && gpu_milli < 1000 {
            return Err(field(
                line,
                "gpu_milli",
                format!("a fraction ({gpu_milli}) of several GPUs ({num_gpu})"),
            ));
        }
        let gpu_spec = spec_col
            .and_then(|c| rec.get(c))
            .map(|s| s.split('|').map(str::trim).filter(|m| !m.is_empty()).map(String::from).collect())
            .unwrap_or_default();
        out.push(TraceTask {
            name: cols.text(&rec, 0).to_string(),
            cpu_milli: cols.num(&rec, line, 1, "cpu_milli")?,
            memory_mib: cols.num(&rec, line, 2, "memory_mib")?,
            num_gpu: num_gpu as u32,
            gpu_milli: gpu_milli as u32,
            gpu_spec,
        });
    }
    if out.is_empty() {
        return Err(TraceError::Empty("tasks"));
    }
    Ok(out)
}

fn open(path: &Path) -> Result<std::fs::File, TraceError> {
    std::fs::File::open(path).map_err(|e| TraceError::Open { path: path.display().to_string(), error: e })
}

fn line_of(e: &csv::Error) -> u64 {
    e.position().map_or(0, |p| p.line())
}

fn field(line: u64, column: &'static str, reason: String) -> TraceError {
    TraceError::Field { line, column, reason }
}

/// Column positions by header name.
struct Columns {
    pos: Vec<usize>,
    names: &'static [&'static str],
}

impl Columns {
    fn new<R: Read>(rdr: &mut csv::Reader<R>, names: &'static [&'static str]) -> Result<Self, TraceError> {
        let headers = rdr.headers().map_err(|e| TraceError::Csv { line: 1, source: e })?;
        let pos = names
            .iter()
            .map(|n| headers.iter().position(|h| h == *n).ok_or(TraceError::MissingColumn(n)))
            .collect::<Result<_, _>>()?;
        Ok(Self { pos, names })
    }

    fn text<'r>(&self, rec: &'r csv::StringRecord, k: usize) -> &'r str {
        rec.get(self.pos[k]).unwrap_or("")
    }

    fn num(
        &self,
        rec: &csv::StringRecord,
        line: u64,
        k: usize,
        column: &'static str,
    ) -> Result<u64, TraceError> {
        let raw = self.text(rec, k);
        debug_assert_eq!(self.names[k], column);
        raw.parse::<u64>().map_err(|_| field(line, column, format!("{raw:?} is not a non-negative integer")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_pod_formats() {
        let full = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n\
                    p0,12000,16384,1,460,G2|T4,LS,Running,0,1,0\np1,1000,10,0,0,,BE,Running,0,1,0\n";
        let t = parse_tasks(full.as_bytes()).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].gpu_spec, vec!["G2".to_string(), "T4".to_string()]);
        assert_eq!(t[0].gpu_milli_total(), 460);
        assert!(t[1].gpu_spec.is_empty());
        let short = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,8000,1,8,1000\n";
        assert_eq!(parse_tasks(short.as_bytes()).unwrap()[0].gpu_milli_total(), 8000);
    }

    #[test]
    fn rejects_bad_rows_with_position() {
        let bad = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,8000,1,2,500\n";
        let e = parse_tasks(bad.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("gpu_milli"), "{e}");
        let bad = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,-3,1,1,500\n";
        assert!(parse_tasks(bad.as_bytes()).unwrap_err().to_string().contains("cpu_milli"));
        let missing = "name,cpu_milli,num_gpu,gpu_milli\np,1,1,500\n";
        assert!(matches!(parse_tasks(missing.as_bytes()), Err(TraceError::MissingColumn("memory_mib"))));
        let nodes = "sn,cpu_milli,memory_mib,gpu,model\nn,1,1,x,G2\n";
        assert!(parse_nodes(nodes.as_bytes()).unwrap_err().to_string().contains("gpu"));
        assert!(matches!(
            parse_nodes("sn,cpu_milli,memory_mib,gpu,model\n".as_bytes()),
            Err(TraceError::Empty(_))
        ));
    }
}
