//! A test definition's YAML, as far as the overlay needs it: `metadata.name`,
//! `run.steps`, the `params` defaults and the `install` section.
//!
//! The job parser reads the job; this reads the definition a job points at
//! (a file of a repository, or an inline definition's text), with the same
//! `marked-yaml`. Values are taken as LAVA's YAML loader (YAML 1.1) would
//! give them to the shell: an unquoted `true`, `yes` or `on` is `True`, an
//! unquoted `false`, `no` or `off` is `False` (Python's spelling, which
//! scripts such as Linaro's `SKIP_INSTALL` checks expect), and a null is
//! empty. A step that YAML made a mapping (an unquoted `: ` in it) is an
//! error naming its line, where LAVA would paste a Python dict into run.sh.

use super::OverlayError;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::Node;

/// What a test definition says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Testdef {
    /// `metadata.name`.
    pub name: Option<String>,
    /// `run.steps`, null items left out as LAVA does.
    pub steps: Vec<String>,
    /// The defaults: `params`, then LAVA's older `parameters`, in order.
    pub params: Vec<(String, String)>,
    pub install: Install,
    /// What labd does not do of this definition, one sentence each.
    pub notes: Vec<String>,
}

/// A definition's `install` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Install {
    pub keys: Vec<String>,
    pub sources: Vec<String>,
    pub deps: Vec<String>,
    /// `deps-<distro>`: (distro, packages).
    pub distro_deps: Vec<(String, Vec<String>)>,
    pub steps: Vec<String>,
    pub git_repos: Vec<GitRepo>,
    /// Keys labd does not know.
    pub other: Vec<String>,
}

/// One `install: git-repos` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitRepo {
    pub url: String,
    pub branch: Option<String>,
    /// The directory it goes to inside the definition's: its `destination`,
    /// or the URL's last part without `.git`, as in LAVA.
    pub destination: String,
}

impl Testdef {
    /// The definition as JSON (which is YAML), for the `testdef.yaml` of a
    /// definition given without its text.
    pub(super) fn to_json(&self) -> String {
        let params: serde_json::Map<String, serde_json::Value> = self
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        let mut v = serde_json::json!({
            "metadata": { "format": "Lava-Test Test Definition 1.0" },
            "params": params,
            "run": { "steps": self.steps },
        });
        if let Some(name) = &self.name {
            v["metadata"]["name"] = name.clone().into();
        }
        if !self.install.steps.is_empty() {
            v["install"] = serde_json::json!({ "steps": self.install.steps });
        }
        format!("{v:#}\n")
    }
}

/// Reads a test definition's YAML text.
pub fn parse_testdef(text: &str) -> Result<Testdef, OverlayError> {
    let root = marked_yaml::parse_yaml(0, text).map_err(|e| OverlayError::Testdef {
        line: None,
        message: format!("not valid YAML: {e}"),
    })?;
    let root = mapping("the definition", &root)?.ok_or_else(|| err(&root, "is not a mapping"))?;
    let mut t = Testdef::default();
    if let Some(meta) = root.get_node("metadata") {
        if let Some(m) = mapping("metadata", meta)? {
            t.name = m.get_scalar("name").map(|s| s.as_str().to_owned());
        }
    }
    if let Some(run) = root.get_node("run") {
        if let Some(run) = mapping("run", run)? {
            if let Some(steps) = run.get_node("steps") {
                t.steps = strings("run.steps", steps)?;
            }
            if run.get_node("parse").is_some() {
                t.notes.push(
                    "run.parse is not supported by labd: report results with lava-test-case"
                        .to_owned(),
                );
            }
        }
    }
    for key in ["params", "parameters"] {
        let Some(node) = root.get_node(key) else {
            continue;
        };
        let Some(m) = mapping(key, node)? else {
            continue;
        };
        for (k, v) in m.iter() {
            let value = match v {
                Node::Scalar(s) => lava_value(s),
                _ => {
                    return Err(err(
                        v,
                        &format!("{key}.{} is not a plain value", k.as_str()),
                    ))
                }
            };
            t.params.push((k.as_str().to_owned(), value));
        }
    }
    if let Some(node) = root.get_node("install") {
        if let Some(m) = mapping("install", node)? {
            t.install = install(m)?;
        }
    }
    Ok(t)
}

fn install(m: &MarkedMappingNode) -> Result<Install, OverlayError> {
    let mut i = Install::default();
    for (k, v) in m.iter() {
        let key = k.as_str();
        let path = format!("install.{key}");
        match key {
            "keys" => i.keys = strings(&path, v)?,
            "sources" => i.sources = strings(&path, v)?,
            "deps" => i.deps = strings(&path, v)?,
            "steps" => i.steps = strings(&path, v)?,
            "git-repos" => i.git_repos = git_repos(v)?,
            _ => match key.strip_prefix("deps-") {
                Some(distro) => i.distro_deps.push((distro.to_owned(), strings(&path, v)?)),
                None => i.other.push(key.to_owned()),
            },
        }
    }
    Ok(i)
}

fn git_repos(v: &Node) -> Result<Vec<GitRepo>, OverlayError> {
    let items: Vec<&Node> = match v {
        Node::Sequence(s) => s.iter().collect(),
        Node::Scalar(s) if is_null(s) => Vec::new(),
        other => vec![other],
    };
    let mut out = Vec::new();
    for item in items {
        let (url, branch, destination) = match item {
            Node::Scalar(s) => (s.as_str().to_owned(), None, None),
            Node::Mapping(m) => {
                let get = |k: &str| m.get_scalar(k).map(|s| s.as_str().to_owned());
                let Some(url) = get("url") else {
                    return Err(err(item, "a git-repos item needs a `url`"));
                };
                (url, get("branch"), get("destination"))
            }
            Node::Sequence(_) => return Err(err(item, "a git-repos item is a URL or a mapping")),
        };
        let destination = destination.unwrap_or_else(|| {
            let last = url.trim_end_matches('/').rsplit('/').next().unwrap_or("");
            last.strip_suffix(".git").unwrap_or(last).to_owned()
        });
        out.push(GitRepo {
            url,
            branch,
            destination,
        });
    }
    Ok(out)
}

/// A mapping, `None` for a null (an empty `run:`), an error otherwise.
fn mapping<'n>(what: &str, node: &'n Node) -> Result<Option<&'n MarkedMappingNode>, OverlayError> {
    match node {
        Node::Mapping(m) => Ok(Some(m)),
        Node::Scalar(s) if is_null(s) => Ok(None),
        _ => Err(err(node, &format!("{what} is not a mapping"))),
    }
}

/// A list of strings; one string is a list of one, null items are left out.
fn strings(what: &str, node: &Node) -> Result<Vec<String>, OverlayError> {
    let items: Vec<&Node> = match node {
        Node::Sequence(s) => s.iter().collect(),
        Node::Scalar(s) if is_null(s) => return Ok(Vec::new()),
        Node::Scalar(_) => vec![node],
        Node::Mapping(_) => return Err(err(node, &format!("{what} is not a list"))),
    };
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Node::Scalar(s) if is_null(s) => {}
            Node::Scalar(s) => out.push(s.as_str().to_owned()),
            _ => {
                return Err(err(
                    item,
                    &format!("{what}[{i}] is not a string (an unquoted `: ` makes a mapping; quote the line)"),
                ))
            }
        }
    }
    Ok(out)
}

fn is_null(s: &MarkedScalarNode) -> bool {
    s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL")
}

/// A scalar as LAVA's YAML 1.1 loader hands it to the shell.
fn lava_value(s: &MarkedScalarNode) -> String {
    if !s.may_coerce() {
        return s.as_str().to_owned();
    }
    match s.as_str() {
        _ if is_null(s) => String::new(),
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => "True".to_owned(),
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => {
            "False".to_owned()
        }
        v => v.to_owned(),
    }
}

fn err(node: &Node, message: &str) -> OverlayError {
    OverlayError::Testdef {
        line: node.span().start().map(|m| m.line()),
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_linaro_smoke_definition() {
        let text = r#"
metadata:
    format: Lava-Test Test Definition 1.0
    name: smoke-tests-basic
params:
    SKIP_INSTALL: "False"
    TESTS: "pwd, lsb_release -a"
    BARE: true
    OFF: off
    EMPTY:
parameters:
    OLD: 3
install:
    deps: [curl]
    deps-debian: [lsb-release]
    steps:
        - echo installing
    git-repos:
        - https://example.org/tools.git
        - url: https://example.org/x.git
          destination: y
          branch: main
    bogus: 1
run:
    steps:
        - cd ./automated/linux/smoke/
        -
        - "./smoke.sh -s ${SKIP_INSTALL}
           -t ${TESTS}"
        - |
          for i in 1 2; do
            echo $i
          done
"#;
        let t = parse_testdef(text).unwrap();
        assert_eq!(t.name.as_deref(), Some("smoke-tests-basic"));
        assert_eq!(
            t.steps,
            vec![
                "cd ./automated/linux/smoke/",
                "./smoke.sh -s ${SKIP_INSTALL} -t ${TESTS}",
                "for i in 1 2; do\n  echo $i\ndone\n",
            ]
        );
        let p = |k: &str| {
            t.params
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(p("SKIP_INSTALL"), Some("False"));
        assert_eq!(p("BARE"), Some("True"));
        assert_eq!(p("OFF"), Some("False"));
        assert_eq!(p("EMPTY"), Some(""));
        assert_eq!(p("OLD"), Some("3"));
        assert_eq!(t.install.deps, vec!["curl"]);
        assert_eq!(
            t.install.distro_deps,
            vec![("debian".to_owned(), vec!["lsb-release".to_owned()])]
        );
        assert_eq!(t.install.steps, vec!["echo installing"]);
        assert_eq!(t.install.git_repos[0].destination, "tools");
        assert_eq!(t.install.git_repos[1].destination, "y");
        assert_eq!(t.install.git_repos[1].branch.as_deref(), Some("main"));
        assert_eq!(t.install.other, vec!["bogus"]);
    }

    #[test]
    fn a_step_that_yaml_made_a_mapping_names_its_line() {
        let e = parse_testdef("run:\n  steps:\n    - echo ok\n    - echo key: value\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("run.steps[1]") && e.contains("line 4"), "{e}");
        assert!(parse_testdef("- a list").is_err());
        assert!(parse_testdef("run: [1]").is_err());
        // An empty `run:` has no steps; `parse` is noted, not refused.
        assert_eq!(parse_testdef("run:\n").unwrap().steps, Vec::<String>::new());
        let t = parse_testdef("run:\n  steps: [x]\n  parse:\n    pattern: x\n").unwrap();
        assert_eq!(t.notes.len(), 1);
    }

    #[test]
    fn json_rendition_is_yaml_that_reads_back() {
        let t = parse_testdef(
            "metadata:\n  name: n\nparams:\n  A: \"it's\"\nrun:\n  steps: [\"echo 'x'\"]\n",
        )
        .unwrap();
        let again = parse_testdef(&t.to_json()).unwrap();
        assert_eq!(again.name, t.name);
        assert_eq!(again.steps, t.steps);
        assert_eq!(again.params, t.params);
    }
}
