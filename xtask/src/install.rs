//! Finds — and on Debian/Ubuntu installs — the servers the stack needs:
//! PostgreSQL ≥ 15 and Redis ≥ 7 from the system's packages, nats-server ≥ 2.10 from Debian 13
//! ("trixie"), fetched with apt's own client into `.keel/tools` (no change to the system's
//! sources; Debian 12's nats-server 2.9 is too old: see shared/reference/toolchain.md); promtool
//! for the SLO rules' tests the same way (Debian 12 has it only inside `prometheus`, whose
//! install would start a server).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

pub struct Tools {
    /// Directory with initdb, pg_ctl, psql.
    pub pg_bin: PathBuf,
    pub redis_server: PathBuf,
    pub nats_server: PathBuf,
    /// initdb refuses to run as root: run PostgreSQL as the `postgres` user then.
    pub pg_as_postgres: bool,
}

const MIN_PG: u32 = 15;
const MIN_REDIS: (u32, u32) = (7, 0);
const MIN_NATS: (u32, u32) = (2, 10);
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const DEFAULT_DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

pub fn ensure(root: &Path) -> Result<Tools> {
    let tools_dir = root.join(".keel/tools");
    let pg_bin = match find_postgres() {
        Some(p) => p,
        None => {
            apt_install(&["postgresql"], "PostgreSQL 15 or newer")?;
            find_postgres().context(
                "PostgreSQL was installed but no initdb ≥ 15 was found under /usr/lib/postgresql",
            )?
        }
    };
    let redis_server = match find_redis() {
        Some(p) => p,
        None => {
            apt_install(&["redis-server"], "Redis 7 or newer")?;
            find_redis().context("redis-server was installed but is older than 7")?
        }
    };
    let nats_server = match find_nats(&tools_dir) {
        Some(p) => p,
        None => {
            fetch_trixie(&tools_dir, "nats-server", "nats", NATS_HINT)?;
            find_nats(&tools_dir).context("nats-server was fetched but does not run")?
        }
    };
    let root_user = is_root();
    if root_user && !user_exists("postgres") {
        bail!(
            "running as root, but there is no `postgres` user to run PostgreSQL as (initdb refuses root); create one with `useradd -r postgres`"
        );
    }
    Ok(Tools {
        pg_bin,
        redis_server,
        nats_server,
        pg_as_postgres: root_user,
    })
}

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status.success().then(|| {
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        s
    })
}

fn is_root() -> bool {
    output("id", &["-u"]).is_some_and(|s| s.trim() == "0")
}

fn user_exists(name: &str) -> bool {
    output("id", &["-u", name]).is_some()
}

fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// First `major.minor` after `prefix` in `s`.
fn version_after(s: &str, prefix: &str) -> Option<(u32, u32)> {
    let rest = &s[s.find(prefix)? + prefix.len()..];
    let mut parts = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn find_postgres() -> Option<PathBuf> {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|v| *v >= MIN_PG)
        .collect();
    versions.sort_unstable();
    versions
        .into_iter()
        .rev()
        .map(|v| PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")))
        .find(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
}

fn find_redis() -> Option<PathBuf> {
    let bin = which("redis-server")?;
    let v = output(bin.to_str()?, &["--version"])?;
    (version_after(&v, "v=")? >= MIN_REDIS).then_some(bin)
}

fn nats_ok(bin: &Path) -> bool {
    bin.is_file()
        && output(bin.to_str().unwrap_or_default(), &["--version"])
            .and_then(|v| version_after(&v, ": v"))
            .is_some_and(|v| v >= MIN_NATS)
}

fn find_nats(tools: &Path) -> Option<PathBuf> {
    let local = tools.join("nats/usr/sbin/nats-server");
    if nats_ok(&local) {
        return Some(local);
    }
    which("nats-server").filter(|p| nats_ok(p))
}

fn has_apt() -> bool {
    which("apt-get").is_some()
}

/// `apt-get` as root, or through sudo.
fn apt_command() -> Result<Command> {
    if is_root() {
        Ok(Command::new("apt-get"))
    } else if which("sudo").is_some() {
        let mut c = Command::new("sudo");
        c.arg("apt-get");
        Ok(c)
    } else {
        bail!("installing packages needs root or sudo")
    }
}

fn run(mut cmd: Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn apt_install(pkgs: &[&str], what: &str) -> Result<()> {
    if !has_apt() {
        bail!(
            "{what} is required and this is not a Debian/Ubuntu machine: install {} with your package manager (or use `docker compose up`)",
            pkgs.join(" ")
        );
    }
    eprintln!("xtask: installing {} with apt-get", pkgs.join(" "));
    let mut update = apt_command()?;
    update.args(["-q", "update"]);
    run(update, "apt-get update")?;
    let mut install = apt_command()?;
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["-q", "install", "-y", "--no-install-recommends"])
        .args(pkgs);
    run(install, "apt-get install")
}

/// The machine's Debian mirror when it has one, else deb.debian.org.
fn debian_mirror() -> String {
    let mut texts = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            if let Ok(t) = std::fs::read_to_string(e.path()) {
                texts.push(t);
            }
        }
    }
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    texts
        .iter()
        .flat_map(|t| t.split_whitespace())
        .find(|w| w.starts_with("http") && w.trim_end_matches('/').ends_with("/debian"))
        .map(|w| w.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| DEFAULT_DEBIAN_MIRROR.to_owned())
}

const NATS_HINT: &str = "nats-server 2.10 or newer is required: download it from https://github.com/nats-io/nats-server/releases and put it on PATH (or use `docker compose up`)";
const PROMTOOL_HINT: &str = "promtool is required for the SLO rules' tests: download a Prometheus release from https://prometheus.io/download/ and put its promtool on PATH";

/// Debian 13's `package`, extracted into `tools/<into>` (`hint` says what to do without apt).
fn fetch_trixie(tools: &Path, package: &str, into: &str, hint: &str) -> Result<()> {
    if !has_apt() {
        bail!("{hint}");
    }
    if !Path::new(DEBIAN_KEYRING).is_file() {
        apt_install(&["debian-archive-keyring"], "Debian's archive keyring")?;
    }
    eprintln!(
        "xtask: fetching {package} from Debian 13 (trixie) into {}",
        tools.display()
    );
    let apt = tools.join("apt");
    for d in ["lists/partial", "cache/archives/partial", "download"] {
        crate::ensure_dir(&apt.join(d))?;
    }
    let list = apt.join("sources.list");
    std::fs::write(
        &list,
        format!(
            "deb [signed-by={DEBIAN_KEYRING}] {} trixie main\n",
            debian_mirror()
        ),
    )?;
    let opts = [
        format!("Dir::Etc::SourceList={}", list.display()),
        "Dir::Etc::SourceParts=/dev/null".to_owned(),
        format!("Dir::State::Lists={}", apt.join("lists").display()),
        format!("Dir::Cache={}", apt.join("cache").display()),
        "Debug::NoLocking=1".to_owned(),
    ];
    let apt_get = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.current_dir(apt.join("download"));
        for o in &opts {
            c.args(["-o", o]);
        }
        c.args(["-q"]).args(args);
        c
    };
    run(apt_get(&["update"]), "apt-get update (trixie lists)")?;
    run(
        apt_get(&["download", package]),
        &format!("apt-get download {package}"),
    )?;
    let prefix = format!("{package}_");
    let deb = std::fs::read_dir(apt.join("download"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "deb")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix))
        })
        .with_context(|| format!("apt-get download produced no {package} .deb"))?;
    let mut x = Command::new("dpkg");
    x.arg("-x").arg(&deb).arg(tools.join(into));
    run(x, &format!("dpkg -x {package}"))
}

fn promtool_ok(bin: &Path) -> bool {
    bin.is_file() && output(bin.to_str().unwrap_or_default(), &["--version"]).is_some()
}

fn find_promtool(tools: &Path) -> Option<PathBuf> {
    let local = tools.join("promtool/usr/bin/promtool");
    if promtool_ok(&local) {
        return Some(local);
    }
    which("promtool").filter(|p| promtool_ok(p))
}

/// promtool (Prometheus' rule checker) for `libs/slo`'s tests: on PATH, or Debian 13's
/// `promtool` package fetched into `.keel/tools/promtool`.
pub fn ensure_promtool(root: &Path) -> Result<PathBuf> {
    let tools_dir = root.join(".keel/tools");
    match find_promtool(&tools_dir) {
        Some(p) => Ok(p),
        None => {
            fetch_trixie(&tools_dir, "promtool", "promtool", PROMTOOL_HINT)?;
            find_promtool(&tools_dir).context("promtool was fetched but does not run")
        }
    }
}

/// The official OpenAI Python SDK the compatibility test drives, pinned.
const OPENAI_SDK: &str = "openai==3.63.0";

/// A Python with the official OpenAI SDK, in `.keel/tools/openai-venv` (Python 3 and its venv
/// module from apt when missing); returns its interpreter.
pub fn ensure_openai_sdk(root: &Path) -> Result<PathBuf> {
    let venv = root.join(".keel/tools/openai-venv");
    let python = venv.join("bin/python");
    let ready = |py: &Path| {
        Command::new(py)
            .args(["-c", "import openai"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready(&python) {
        return Ok(python);
    }
    let system = match which("python3") {
        Some(p) => p,
        None => {
            apt_install(
                &["python3", "python3-venv"],
                "Python 3 (for the OpenAI SDK test)",
            )?;
            which("python3").context("python3 was installed but is not on PATH")?
        }
    };
    let made = Command::new(&system)
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .output()
        .context("creating the OpenAI SDK's virtual environment")?;
    if !made.status.success() {
        // Debian splits venv's pip bootstrap into python3-venv.
        apt_install(&["python3-venv"], "Python's venv module")?;
        let mut again = Command::new(&system);
        again.args(["-m", "venv", "--clear"]).arg(&venv);
        run(again, "python3 -m venv")?;
    }
    eprintln!("xtask: installing {OPENAI_SDK} for the OpenAI compatibility test");
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        OPENAI_SDK,
    ]);
    run(pip, "pip install openai")?;
    if !ready(&python) {
        bail!("the OpenAI SDK was installed but does not import");
    }
    Ok(python)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(version_after("nats-server: v2.10.27", ": v"), Some((2, 10)));
        assert_eq!(
            version_after("Redis server v=7.0.15 sha=00000000:0", "v="),
            Some((7, 0))
        );
        assert_eq!(version_after("nothing", "v="), None);
        assert!((2, 9) < MIN_NATS);
    }
}
