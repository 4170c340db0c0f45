//! Command templates: `{{host}}`, `{{release}}`, profile variables.
//!
//! minijinja does the parsing so that syntax errors and undefined names are found by a real
//! template engine rather than a hand-rolled `replace`. Rendering is strict: a name without a
//! value is an error, never an empty string silently pasted into a shell command.

use std::collections::{BTreeMap, BTreeSet};

use minijinja::{Environment, UndefinedBehavior};

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Commands are shell, not HTML: never escape.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env
}

/// The top-level names a template reads, or the template's syntax error.
pub fn variables(source: &str) -> Result<BTreeSet<String>, String> {
    let env = environment();
    let template = env.template_from_str(source).map_err(describe)?;
    Ok(template.undeclared_variables(false).into_iter().collect())
}

/// Renders `source` with string variables; any undefined name is an error.
pub fn render(source: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let env = environment();
    let template = env.template_from_str(source).map_err(describe)?;
    template.render(vars).map_err(describe)
}

/// Renders a template file (a `template` step's): as [`render`], keeping the file's last
/// newline, which a config file needs and a command does not.
pub fn render_file(source: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut env = environment();
    let syntax = minijinja::syntax::SyntaxConfig::builder().keep_trailing_newline(true).build().map_err(describe)?;
    env.set_syntax(syntax);
    let template = env.template_from_str(source).map_err(describe)?;
    template.render(vars).map_err(describe)
}

fn describe(err: minijinja::Error) -> String {
    match (err.detail(), err.line()) {
        (Some(detail), Some(line)) => format!("{detail} (template line {line})"),
        (Some(detail), None) => detail.to_string(),
        (None, _) => err.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_the_names_a_template_reads() {
        let names = variables("cd /srv/{{ service }} && ln -s {{release}} current").unwrap();
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["release", "service"]);
    }

    #[test]
    fn undefined_names_fail_to_render() {
        let err = render("echo {{ nope }}", &BTreeMap::new()).unwrap_err();
        assert!(err.contains("undefined"), "{err}");
    }

    #[test]
    fn does_not_escape_shell_characters() {
        let vars = BTreeMap::from([("x".to_string(), "<a & 'b'>".to_string())]);
        assert_eq!(render("echo {{x}}", &vars).unwrap(), "echo <a & 'b'>");
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(variables("echo {{ host ").is_err());
    }
}
