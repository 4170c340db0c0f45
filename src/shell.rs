//! Shell text wavedeck writes for hosts: quoting, and the scripts of the built-in release
//! layout (`activate`, `prune`, `switch-back`). A leaf: it knows nothing of profiles or
//! transports, only POSIX `sh`.

/// Quotes for the remote POSIX shell: plain words stay as they are, anything else goes in
/// single quotes, inside which only `'` itself needs care. (Hand-written on purpose: the rule is
/// three lines and must never produce double quotes, where `$` and backticks still expand.)
pub fn quote(s: &str) -> String {
    let plain = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c));
    if plain { s.to_string() } else { format!("'{}'", s.replace('\'', "'\"'\"'")) }
}

/// Points `current` at `dir/{{ release }}` atomically and records it; skipped when it is
/// already current. Right after the switch it reports the change (`WAVEDECK-CHANGED`), which
/// is what a rollback returns the host by.
pub fn activate(dir: &str) -> String {
    let d = quote(dir);
    format!(
        "test -d {d}/{{{{ release }}}} || {{ echo \"{d}/{{{{ release }}}} does not exist: stage it first\" >&2; exit 1; }}\n\
         if [ \"$(readlink current 2>/dev/null)\" = {d}/{{{{ release }}}} ]; then echo \"WAVEDECK-SKIP {{{{ release }}}} is already current\"; exit 0; fi\n\
         was=$(basename \"$(readlink current 2>/dev/null)\" 2>/dev/null)\n\
         ln -sfn {d}/{{{{ release }}}} current.wavedeck-new && mv -T current.wavedeck-new current\n\
         echo \"WAVEDECK-CHANGED ${{was:--}} -> {{{{ release }}}}\"\n\
         echo {{{{ release }}}} >> {d}/.history\n\
         echo \"current -> {d}/{{{{ release }}}}\""
    )
}

/// Removes all but the newest `keep` releases, never the current one. Only entries named
/// like a release are considered, so a hostile or broken name (empty, `.`, `..`, with a
/// newline or a slash) can never widen what `rm` removes.
pub fn prune(dir: &str, keep: u32) -> String {
    let d = quote(dir);
    format!(
        "cur=$(basename \"$(readlink current 2>/dev/null)\")\n\
         (cd {d} || exit 1\n\
         set --\n\
         for name in *; do\n\
         \x20 case $name in ''|.*|-*|*[!A-Za-z0-9._-]*) continue ;; esac\n\
         \x20 [ -d \"$name\" ] && [ \"$name\" != \"$cur\" ] && set -- \"$@\" \"$name\"\n\
         done\n\
         [ $# -eq 0 ] || ls -1td -- \"$@\" | tail -n +{keep} | while read -r old; do rm -rf -- \"$old\" && echo \"pruned $old\"; done\n\
         echo \"keeping $(ls -1 | wc -l) releases\")",
        keep = keep.max(1)
    )
}

/// Switches `current` to `{{ release }}`, which in a rollback is the release the deploy found
/// on this host; skipped when it is already current.
pub fn switch_back(dir: &str) -> String {
    let d = quote(dir);
    format!(
        "test -d {d}/{{{{ release }}}} || {{ echo \"{d}/{{{{ release }}}} is not on this host: cannot return to it\" >&2; exit 1; }}\n\
         was=$(basename \"$(readlink current 2>/dev/null)\" 2>/dev/null)\n\
         if [ \"$was\" = {{{{ release }}}} ]; then echo \"WAVEDECK-SKIP already on {{{{ release }}}}\"; exit 0; fi\n\
         ln -sfn {d}/{{{{ release }}}} current.wavedeck-new && mv -T current.wavedeck-new current\n\
         echo \"WAVEDECK-CHANGED ${{was:--}} -> {{{{ release }}}}\"\n\
         echo {{{{ release }}}} >> {d}/.history\n\
         echo \"rolled back to {{{{ release }}}}\""
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_newest_and_never_widens_to_the_whole_directory() {
        let host = tempfile::tempdir().unwrap();
        let releases = host.path().join("releases");
        for (i, name) in ["r1", "r2", "r3", "r4"].iter().enumerate() {
            std::fs::create_dir_all(releases.join(name)).unwrap();
            let when = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + i as u64);
            std::fs::File::open(releases.join(name)).unwrap().set_modified(when).unwrap();
        }
        // Hostile entries: a name ending in a newline, one with a newline inside, a dash.
        for hostile in ["evil\n", "r1\nr2", "-rf"] {
            std::fs::create_dir_all(releases.join(hostile)).unwrap();
        }
        std::os::unix::fs::symlink("releases/r2", host.path().join("current")).unwrap();
        let script = prune("releases", 2);
        let out = std::process::Command::new("sh").arg("-c").arg(script).current_dir(host.path()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut left: Vec<String> = std::fs::read_dir(&releases)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        // current (r2) and the newest other (r4) stay; hostile names are not touched at all.
        assert_eq!(left, ["-rf", "evil\n", "r1\nr2", "r2", "r4"]);
    }
}
