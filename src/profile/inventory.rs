//! Ansible inventories as an environment's host source (`hosts_from = { ansible = "…", group =
//! "web" }`): INI and YAML inventories with groups, children and `[group:vars]`, host ranges
//! (`web[01:20].example.com`), `ansible_host`, `ansible_port` and `ansible_user`, and the
//! `group_vars/` and `host_vars/` files beside the inventory.
//!
//! Variables are resolved as Ansible does for inventory sources: groups from the widest (`all`)
//! to the narrowest, a group's own vars before its `group_vars` file, then the host's inline vars,
//! then its `host_vars` file. Scalars become template variables; lists and maps cannot, and are
//! named so that `plan` can say so.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

use crate::diag::Diagnostic;

/// A host as the inventory describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryHost {
    pub name: String,
    /// `ansible_host`.
    pub address: Option<String>,
    /// `ansible_port`.
    pub port: Option<u16>,
    /// `ansible_user`.
    pub user: Option<String>,
    /// Scalar variables, resolved.
    pub vars: BTreeMap<String, String>,
    /// Variables that are lists or maps, which templates cannot use.
    pub ignored: Vec<String>,
    /// Where it is defined: `inventory/prod.ini:12`.
    pub from: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Scalar(String),
    /// A list or a map.
    Nested,
}

type Vars = Vec<(String, Value)>;

#[derive(Debug, Default)]
struct Group {
    hosts: Vec<String>,
    children: Vec<String>,
    vars: Vars,
}

#[derive(Debug, Default)]
struct Inventory {
    groups: BTreeMap<String, Group>,
    /// Hosts in the order they first appear, with their inline vars and where.
    hosts: Vec<(String, Vars, String)>,
}

impl Inventory {
    fn group(&mut self, name: &str) -> &mut Group {
        self.groups.entry(name.to_string()).or_default()
    }

    fn add_host(&mut self, group: &str, host: &str, vars: Vars, from: String) {
        match self.hosts.iter_mut().find(|(h, _, _)| h == host) {
            Some((_, known, _)) => known.extend(vars),
            None => self.hosts.push((host.to_string(), vars, from)),
        }
        let members = &mut self.group(group).hosts;
        if !members.iter().any(|h| h == host) {
            members.push(host.to_string());
        }
    }
}

/// The hosts of `group` (and its children) in the inventory at `file`, in the order the
/// inventory lists them.
pub fn load(file: &Path, shown: &str, group: &str) -> Result<Vec<InventoryHost>, Vec<Diagnostic>> {
    let source = std::fs::read_to_string(file)
        .map_err(|e| vec![Diagnostic::whole_file(file, format!("cannot read the inventory: {e}"))])?;
    let is_yaml = file.extension().is_some_and(|e| e == "yml" || e == "yaml")
        || source.trim_start().starts_with("---")
        || (!source.trim_start().starts_with('[') && first_line(&source).is_some_and(|l| l.ends_with(':')));
    let mut inventory = if is_yaml { yaml(file, shown, &source)? } else { ini(file, shown, &source)? };
    // Every host is in `all`; one in no other group is also `ungrouped`.
    let grouped: BTreeSet<String> =
        inventory.groups.iter().filter(|(g, _)| *g != "all").flat_map(|(_, g)| g.hosts.clone()).collect();
    let all_hosts: Vec<String> = inventory.hosts.iter().map(|(h, _, _)| h.clone()).collect();
    for host in &all_hosts {
        if !grouped.contains(host) {
            let members = &mut inventory.group("ungrouped").hosts;
            if !members.contains(host) {
                members.push(host.clone());
            }
        }
    }
    let tops: Vec<String> = {
        let children: BTreeSet<&String> = inventory.groups.values().flat_map(|g| &g.children).collect();
        inventory.groups.keys().filter(|g| *g != "all" && !children.contains(g)).cloned().collect()
    };
    let all = inventory.group("all");
    all.hosts = all_hosts;
    for top in tops {
        if !all.children.contains(&top) {
            all.children.push(top);
        }
    }
    if !inventory.groups.contains_key(group) {
        let known: Vec<&str> = inventory.groups.keys().map(String::as_str).collect();
        return Err(vec![Diagnostic::whole_file(
            file,
            format!("no group `{group}` in this inventory (groups: {})", known.join(", ")),
        )]);
    }
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut problems = Vec::new();
    let mut group_files: BTreeMap<String, Vars> = BTreeMap::new();
    for name in inventory.groups.keys() {
        group_files.insert(name.clone(), vars_files(&dir.join("group_vars"), name, &mut problems));
    }
    let depth = depths(&inventory);
    let parents = parents(&inventory);
    let mut out = Vec::new();
    for name in members(&inventory, group) {
        let Some((_, inline, from)) = inventory.hosts.iter().find(|(h, _, _)| *h == name) else { continue };
        let mut groups: Vec<&String> = ancestors(&inventory, &parents, &name).into_iter().collect();
        groups.sort_by_key(|g| (depth.get(*g).copied().unwrap_or(usize::MAX), (*g).clone()));
        let mut merged: BTreeMap<String, Value> = BTreeMap::new();
        for g in groups {
            let own = inventory.groups.get(g).map(|g| g.vars.clone()).unwrap_or_default();
            merged.extend(own);
            merged.extend(group_files.get(g).cloned().unwrap_or_default());
        }
        merged.extend(inline.clone());
        merged.extend(vars_files(&dir.join("host_vars"), &name, &mut problems));
        let scalar = |key: &str| match merged.get(key) {
            Some(Value::Scalar(v)) if !v.is_empty() => Some(v.clone()),
            _ => None,
        };
        let port = match scalar("ansible_port") {
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => Some(p),
                _ => {
                    problems.push(Diagnostic::whole_file(file, format!("{name}: ansible_port `{p}` is not a port")));
                    None
                }
            },
            None => None,
        };
        out.push(InventoryHost {
            address: scalar("ansible_host"),
            user: scalar("ansible_user"),
            port,
            ignored: merged.iter().filter(|(_, v)| **v == Value::Nested).map(|(k, _)| k.clone()).collect(),
            vars: merged
                .iter()
                .filter_map(|(k, v)| match v {
                    Value::Scalar(s) => Some((k.clone(), s.clone())),
                    Value::Nested => None,
                })
                .collect(),
            name,
            from: from.clone(),
        });
    }
    if problems.is_empty() { Ok(out) } else { Err(problems) }
}

fn first_line(source: &str) -> Option<&str> {
    source.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
}

/// Hosts of `group` and of its children, each once, in inventory order.
fn members(inventory: &Inventory, group: &str) -> Vec<String> {
    let mut seen_groups = BTreeSet::new();
    let mut found = BTreeSet::new();
    let mut queue = VecDeque::from([group.to_string()]);
    while let Some(g) = queue.pop_front() {
        if !seen_groups.insert(g.clone()) {
            continue;
        }
        if let Some(entry) = inventory.groups.get(&g) {
            found.extend(entry.hosts.iter().cloned());
            queue.extend(entry.children.iter().cloned());
        }
    }
    inventory.hosts.iter().map(|(h, _, _)| h.clone()).filter(|h| found.contains(h)).collect()
}

fn parents(inventory: &Inventory) -> BTreeMap<String, Vec<String>> {
    let mut parents: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, group) in &inventory.groups {
        for child in &group.children {
            parents.entry(child.clone()).or_default().push(name.clone());
        }
    }
    parents
}

/// The groups `host` is in, directly or through children, `all` included.
fn ancestors<'a>(
    inventory: &'a Inventory,
    parents: &'a BTreeMap<String, Vec<String>>,
    host: &str,
) -> BTreeSet<&'a String> {
    let mut found = BTreeSet::new();
    let mut queue: VecDeque<&String> =
        inventory.groups.iter().filter(|(_, g)| g.hosts.iter().any(|h| h == host)).map(|(n, _)| n).collect();
    while let Some(g) = queue.pop_front() {
        if found.insert(g) {
            queue.extend(parents.get(g).into_iter().flatten());
        }
    }
    found
}

/// How deep each group sits under `all` (its longest path), so wider groups' vars go first.
fn depths(inventory: &Inventory) -> BTreeMap<String, usize> {
    let mut depth: BTreeMap<String, usize> = BTreeMap::from([("all".to_string(), 0)]);
    // A bounded relaxation: a cycle cannot make it loop for ever.
    for _ in 0..inventory.groups.len() {
        let mut changed = false;
        for (name, group) in &inventory.groups {
            let Some(d) = depth.get(name).copied() else { continue };
            for child in &group.children {
                if depth.get(child).is_none_or(|c| *c < d + 1) {
                    depth.insert(child.clone(), d + 1);
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    depth
}

/// `dir/<name>` as a YAML file (`<name>`, `.yml`, `.yaml`) or a directory of them.
fn vars_files(dir: &Path, name: &str, problems: &mut Vec<Diagnostic>) -> Vars {
    let mut files: Vec<PathBuf> =
        ["", ".yml", ".yaml"].iter().map(|ext| dir.join(format!("{name}{ext}"))).filter(|p| p.is_file()).collect();
    let folder = dir.join(name);
    if folder.is_dir()
        && let Ok(entries) = std::fs::read_dir(&folder)
    {
        let mut inside: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
            .collect();
        inside.sort();
        files.extend(inside);
    }
    let mut vars = Vars::new();
    for file in files {
        let source = match std::fs::read_to_string(&file) {
            Ok(s) => s,
            Err(e) => {
                problems.push(Diagnostic::whole_file(&file, format!("cannot read: {e}")));
                continue;
            }
        };
        match YamlLoader::load_from_str(&source) {
            Ok(docs) => match docs.into_iter().next() {
                Some(Yaml::Hash(map)) => vars.extend(hash_vars(&map)),
                None | Some(Yaml::Null) => {}
                Some(_) => problems.push(Diagnostic::whole_file(&file, "expected a map of variables")),
            },
            Err(e) => problems.push(yaml_problem(&file, &source, &e)),
        }
    }
    vars
}

fn yaml_problem(file: &Path, source: &str, e: &yaml_rust2::ScanError) -> Diagnostic {
    let at = e.marker().index().min(source.len());
    let at = (0..=at).rev().find(|i| source.is_char_boundary(*i)).unwrap_or(0);
    Diagnostic::at(file, source, at..at, format!("YAML: {}", e.info()))
}

fn scalar(value: &Yaml) -> Value {
    match value {
        Yaml::String(s) | Yaml::Real(s) => Value::Scalar(s.clone()),
        Yaml::Integer(i) => Value::Scalar(i.to_string()),
        Yaml::Boolean(b) => Value::Scalar(b.to_string()),
        Yaml::Null => Value::Scalar(String::new()),
        _ => Value::Nested,
    }
}

fn key(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn hash_vars(map: &yaml_rust2::yaml::Hash) -> Vars {
    map.iter().filter_map(|(k, v)| Some((key(k)?, scalar(v)))).collect()
}

/// A YAML inventory: `group: { hosts: {…}, vars: {…}, children: { group: … } }` from the top.
fn yaml(file: &Path, shown: &str, source: &str) -> Result<Inventory, Vec<Diagnostic>> {
    let docs = YamlLoader::load_from_str(source).map_err(|e| vec![yaml_problem(file, source, &e)])?;
    let mut inventory = Inventory::default();
    let mut problems = Vec::new();
    match docs.into_iter().next() {
        Some(Yaml::Hash(top)) => {
            for (name, body) in &top {
                let Some(name) = key(name) else { continue };
                yaml_group(&mut inventory, &name, body, shown, source, file, &mut problems);
            }
        }
        None | Some(Yaml::Null) => {}
        Some(_) => problems.push(Diagnostic::whole_file(file, "expected a map of groups at the top (e.g. `all:`)")),
    }
    if problems.is_empty() { Ok(inventory) } else { Err(problems) }
}

fn yaml_group(
    inventory: &mut Inventory,
    name: &str,
    body: &Yaml,
    shown: &str,
    source: &str,
    file: &Path,
    problems: &mut Vec<Diagnostic>,
) {
    inventory.group(name);
    let map = match body {
        Yaml::Hash(map) => map,
        Yaml::Null => return,
        _ => {
            problems.push(Diagnostic::whole_file(file, format!("group `{name}`: expected hosts, vars or children")));
            return;
        }
    };
    for (k, v) in map {
        match key(k).as_deref() {
            Some("hosts") => {
                let Yaml::Hash(hosts) = v else {
                    if *v != Yaml::Null {
                        problems.push(Diagnostic::whole_file(file, format!("group `{name}`: hosts must be a map")));
                    }
                    continue;
                };
                for (host, vars) in hosts {
                    let Some(host) = key(host) else { continue };
                    let vars = match vars {
                        Yaml::Hash(map) => hash_vars(map),
                        _ => Vars::new(),
                    };
                    let from = format!("{shown}:{}", line_of(source, &host));
                    for expanded in expand(&host).unwrap_or_else(|| vec![host.clone()]) {
                        inventory.add_host(name, &expanded, vars.clone(), from.clone());
                    }
                }
            }
            Some("vars") => {
                if let Yaml::Hash(map) = v {
                    let vars = hash_vars(map);
                    inventory.group(name).vars.extend(vars);
                }
            }
            Some("children") => {
                let Yaml::Hash(children) = v else { continue };
                for (child, body) in children {
                    let Some(child) = key(child) else { continue };
                    let group = inventory.group(name);
                    if !group.children.contains(&child) {
                        group.children.push(child.clone());
                    }
                    yaml_group(inventory, &child, body, shown, source, file, problems);
                }
            }
            other => problems.push(Diagnostic::whole_file(
                file,
                format!("group `{name}`: unexpected key `{}` (expected hosts, vars or children)", other.unwrap_or("?")),
            )),
        }
    }
}

/// The line a host name is first written on, for `plan`'s "where it came from".
fn line_of(source: &str, host: &str) -> usize {
    source.lines().position(|l| l.trim_start().starts_with(host)).map_or(0, |i| i + 1)
}

/// An INI inventory: `[group]` hosts with `key=value` vars, `[group:vars]`, `[group:children]`.
fn ini(file: &Path, shown: &str, source: &str) -> Result<Inventory, Vec<Diagnostic>> {
    let mut inventory = Inventory::default();
    let mut problems = Vec::new();
    // Hosts before any section are in no group but `all`.
    let mut section = ("ungrouped".to_string(), Kind::Hosts);
    let mut offset = 0;
    for (i, raw) in source.split_inclusive('\n').enumerate() {
        let line_start = offset;
        offset += raw.len();
        let line = strip_comment(raw.trim_end_matches(['\n', '\r']));
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let at = line_start + (line.len() - line.trim_start().len());
        let problem = |message: String| Diagnostic::at(file, source, at..at, message);
        if let Some(header) = trimmed.strip_prefix('[') {
            let Some(header) = header.strip_suffix(']') else {
                problems.push(problem("a section header must end with `]`".into()));
                continue;
            };
            section = match header.split_once(':') {
                None => (header.to_string(), Kind::Hosts),
                Some((g, "vars")) => (g.to_string(), Kind::Vars),
                Some((g, "children")) => (g.to_string(), Kind::Children),
                Some((_, other)) => {
                    problems.push(problem(format!("unknown section kind `:{other}` (expected :vars or :children)")));
                    continue;
                }
            };
            inventory.group(&section.0);
            continue;
        }
        match section.1 {
            Kind::Hosts => {
                let mut words = trimmed.split_whitespace();
                let Some(pattern) = words.next() else { continue };
                let mut vars = Vars::new();
                for word in words {
                    match word.split_once('=') {
                        Some((k, v)) => vars.push((k.to_string(), Value::Scalar(unquote(v)))),
                        None => problems.push(problem(format!("expected key=value after the host, found `{word}`"))),
                    }
                }
                match expand(pattern) {
                    Some(hosts) => {
                        for host in hosts {
                            inventory.add_host(&section.0, &host, vars.clone(), format!("{shown}:{}", i + 1));
                        }
                    }
                    None => {
                        problems.push(problem(format!("bad host range in `{pattern}` (expected [01:20] or [a:f])")))
                    }
                }
            }
            Kind::Vars => match trimmed.split_once('=') {
                Some((k, v)) => {
                    inventory.group(&section.0).vars.push((k.trim().to_string(), Value::Scalar(unquote(v.trim()))))
                }
                None => problems.push(problem(format!("expected key=value in [{}:vars]", section.0))),
            },
            Kind::Children => {
                let child = trimmed.to_string();
                inventory.group(&child);
                let group = inventory.group(&section.0);
                if !group.children.contains(&child) {
                    group.children.push(child);
                }
            }
        }
    }
    if problems.is_empty() { Ok(inventory) } else { Err(problems) }
}

#[derive(Clone, Copy)]
enum Kind {
    Hosts,
    Vars,
    Children,
}

/// A line without its comment: `#` or `;` at its start, or ` #` later.
fn strip_comment(line: &str) -> &str {
    let trimmed = line.trim_start();
    if trimmed.starts_with('#') || trimmed.starts_with(';') {
        return "";
    }
    match line.find(" #") {
        Some(i) => &line[..i],
        None => line,
    }
}

fn unquote(value: &str) -> String {
    let v = value.trim();
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return v[1..v.len() - 1].to_string();
        }
    }
    v.to_string()
}

/// `web[01:03].example.com` → web01…web03; `db-[a:c]` → db-a…db-c; `[1:9:2]` steps. A name
/// without a range is itself; `None` for a range that is not one.
fn expand(pattern: &str) -> Option<Vec<String>> {
    let Some(open) = pattern.find('[') else { return Some(vec![pattern.to_string()]) };
    let close = open + pattern[open..].find(']')?;
    let (head, inner, tail) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    let mut parts = inner.split(':');
    let (from, to) = (parts.next()?, parts.next()?);
    let step: usize = match parts.next() {
        Some(s) => s.parse().ok().filter(|s| *s > 0)?,
        None => 1,
    };
    if parts.next().is_some() {
        return None;
    }
    let items: Vec<String> = if let (Ok(a), Ok(b)) = (from.parse::<u64>(), to.parse::<u64>()) {
        if a > b || b - a > 100_000 {
            return None;
        }
        // Zero padding as the start is written: [01:20] gives 01…20.
        let width = if from.starts_with('0') && from.len() > 1 { from.len() } else { 0 };
        (a..=b).step_by(step).map(|n| format!("{n:0width$}")).collect()
    } else {
        let (a, b) = (single_letter(from)?, single_letter(to)?);
        if a > b {
            return None;
        }
        (a..=b).step_by(step).map(|c| c.to_string()).collect()
    };
    let rests = expand(tail)?;
    // Ranges multiply: a pattern is refused before it could name more hosts than any fleet has.
    if items.len().saturating_mul(rests.len()) > MAX_EXPANDED {
        return None;
    }
    let mut out = Vec::new();
    for item in items {
        for rest in &rests {
            out.push(format!("{head}{item}{rest}"));
        }
    }
    Some(out)
}

/// The most hosts one inventory pattern may name.
const MAX_EXPANDED: usize = 100_000;

fn single_letter(s: &str) -> Option<char> {
    let mut chars = s.chars();
    let c = chars.next()?;
    (chars.next().is_none() && c.is_ascii_alphabetic()).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inventory").join(name)
    }

    fn names(hosts: &[InventoryHost]) -> Vec<&str> {
        hosts.iter().map(|h| h.name.as_str()).collect()
    }

    #[test]
    fn ranges_expand_with_their_padding_steps_and_letters() {
        assert_eq!(
            expand("web[01:03].example.com").unwrap(),
            ["web01.example.com", "web02.example.com", "web03.example.com"]
        );
        assert_eq!(expand("db-[a:c]").unwrap(), ["db-a", "db-b", "db-c"]);
        assert_eq!(expand("h[1:9:4]").unwrap(), ["h1", "h5", "h9"]);
        assert_eq!(expand("r[1:2]-n[1:2]").unwrap(), ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]);
        assert_eq!(expand("plain").unwrap(), ["plain"]);
        for bad in ["w[3:1]", "w[a:9]", "w[1:2:0]", "w[1:", "w[aa:b]", "w[1:99999]-[1:99999]"] {
            assert_eq!(expand(bad), None, "{bad}");
        }
    }

    #[test]
    fn ini_and_yaml_inventories_give_the_same_hosts_and_variables() {
        for file in ["prod.ini", "prod.yml"] {
            let path = fixture(file);
            let all = load(&path, file, "all").unwrap();
            assert_eq!(
                names(&all),
                [
                    "mail.example.com",
                    "foo.example.com",
                    "bar.example.com",
                    "www01.example.com",
                    "www02.example.com",
                    "www03.example.com",
                    "one.example.com",
                    "two.example.com",
                    "three.example.com"
                ],
                "{file}"
            );
            // Nested children: prod is east and west.
            assert_eq!(
                names(&load(&path, file, "prod").unwrap()),
                ["foo.example.com", "bar.example.com", "one.example.com", "two.example.com", "three.example.com"],
                "{file}"
            );
            let db = load(&path, file, "dbservers").unwrap();
            let one = &db[0];
            assert_eq!((one.address.as_deref(), one.user.as_deref()), (Some("10.0.0.11"), Some("dbadmin")), "{file}");
            // all < prod < east (the narrower group wins), and the host's own file over all.
            assert_eq!(one.vars["region"], "eu-east", "{file}");
            assert_eq!(db[2].vars["region"], "eu", "{file}: three is in west, under prod");
            assert_eq!(one.vars["ntp_server"], "ntp.all.example.com", "{file}");
            let web = load(&path, file, "webservers").unwrap();
            assert_eq!(web[0].vars["http_port"], "8080", "{file}: host_vars over the group's vars");
            assert_eq!(web[1].vars["http_port"], "80", "{file}");
            assert_eq!(web[0].vars["ntp_server"], "ntp.web.example.com", "{file}: the group over all");
            assert_eq!(web[0].port, Some(2222), "{file}");
            assert_eq!(web[0].ignored, ["packages"], "{file}: a list is left out, and named");
        }
        let mail = &load(&fixture("prod.ini"), "prod.ini", "ungrouped").unwrap()[0];
        assert_eq!((mail.name.as_str(), mail.from.as_str()), ("mail.example.com", "prod.ini:2"));
    }

    #[test]
    fn a_broken_inventory_is_reported_at_its_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("bad.ini");
        std::fs::write(&ini, "[web]\nok.example.com\n  web[9:1].example.com\n[web:hosts]\n").unwrap();
        let problems = load(&ini, "bad.ini", "all").unwrap_err();
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert!(text[0].contains("bad.ini:3:3: bad host range in `web[9:1].example.com`"), "{text:#?}");
        assert!(text[1].contains("bad.ini:4:1: unknown section kind `:hosts`"), "{text:#?}");
        let yaml = dir.path().join("bad.yml");
        std::fs::write(&yaml, "all:\n  hosts:\n    a: [unclosed\n").unwrap();
        let problems = load(&yaml, "bad.yml", "all").unwrap_err();
        assert!(problems[0].to_string().contains("bad.yml:4:"), "{}", problems[0]);
        let missing = load(&fixture("prod.ini"), "prod.ini", "nosuch").unwrap_err();
        assert!(
            missing[0].to_string().contains("no group `nosuch` in this inventory (groups: all, dbservers"),
            "{}",
            missing[0]
        );
    }

    #[test]
    fn a_group_that_is_its_own_child_ends() {
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("loop.ini");
        std::fs::write(&ini, "[a]\nh1\n[a:children]\nb\n[b:children]\na\n").unwrap();
        assert_eq!(names(&load(&ini, "loop.ini", "b").unwrap()), ["h1"]);
    }
}
