//! The runnable images of the provisioning benchmark (`corpus build`): real
//! Debian, PyPI and npm software in several layers, each with an entrypoint
//! that starts the service, waits until it answers and prints [`READY`].
//!
//! Every image has two versions built the way real updates happen:
//! - v1: the debootstrapped base, packages from Debian `bookworm`, the
//!   application's PyPI/npm dependencies at an older version, app files;
//! - v2: a rebuilt base (`apt-get upgrade` against `bookworm-security`, so its
//!   digest differs though most files are equal), packages resolved with the
//!   security archive too (bumped libraries and servers), bumped PyPI/npm
//!   dependencies and a changed application layer.

/// The line every entrypoint prints on stdout once the service answers.
pub const READY: &str = "READY";

/// Version of an image in the corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The first version.
    V1,
    /// The update.
    V2,
}

impl Version {
    /// `v1` or `v2`.
    pub fn tag(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// Language-level dependencies installed into their own layer.
#[derive(Debug, Clone, Copy)]
pub enum Deps {
    /// None.
    None,
    /// Python requirements (`pip install --target`), v1 and v2 pins.
    Pip(&'static [&'static str], &'static [&'static str]),
    /// npm packages installed below `/app`, v1 and v2 pins.
    Npm(&'static [&'static str], &'static [&'static str]),
}

/// One image of the provisioning benchmark.
#[derive(Debug, Clone, Copy)]
pub struct BenchImage {
    /// Repository name in the registry.
    pub name: &'static str,
    /// Package layers above the base, bottom first (Debian package names).
    pub packages: &'static [&'static [&'static str]],
    /// Language-level dependencies layer.
    pub deps: Deps,
    /// Shell body of the entrypoint (after the shared prologue); must start
    /// the service, wait for it and `echo READY`.
    pub script: &'static str,
}

const WAIT_TCP: &str = r#"#!/bin/bash
# wait-tcp PORT: returns once something accepts TCP connections on 127.0.0.1:PORT.
for _ in $(seq 1200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && exit 0
    sleep 0.05
done
echo "wait-tcp: nothing listens on port $1" >&2
exit 1
"#;

const FLASK_APP: &str = r#"import os

from flask import Flask, jsonify

app = Flask(__name__)
VERSION = os.environ.get("APP_VERSION", "dev")


@app.route("/")
def index():
    return jsonify(status="ok", version=VERSION, host=os.uname().nodename)


@app.route("/healthz")
def healthz():
    return "ok\n"


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=8080)
"#;

/// The import-heavy application: numpy and pandas are imported (and used)
/// before the server answers, as a data service would at start.
const PANDAS_APP: &str = r#"import http.server
import os

import numpy as np
import pandas as pd

VERSION = os.environ.get("APP_VERSION", "dev")
frame = pd.DataFrame({"x": np.arange(1000), "y": np.random.default_rng(1).normal(size=1000)})
summary = frame.describe().to_json()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ('{"version": "%s", "summary": %s}' % (VERSION, summary)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)


http.server.HTTPServer(("127.0.0.1", 8080), Handler).serve_forever()
"#;

const NODE_APP: &str = r#"const express = require("express");
const app = express();
const version = process.env.APP_VERSION || "dev";
app.get("/", (req, res) => res.json({ status: "ok", version }));
app.get("/healthz", (req, res) => res.send("ok\n"));
app.listen(3000, "127.0.0.1");
"#;

/// Every image of the provisioning corpus.
pub const BENCH_IMAGES: &[BenchImage] = &[
    BenchImage {
        name: "redis",
        packages: &[&["redis-server"]],
        deps: Deps::None,
        script: r#"redis-server /etc/redis/bench.conf &
until redis-cli ping >/dev/null 2>&1; do sleep 0.05; done
echo READY
wait
"#,
    },
    BenchImage {
        name: "nginx",
        packages: &[&["nginx", "ca-certificates"]],
        deps: Deps::None,
        script: r#"mkdir -p /var/lib/nginx/body /var/log/nginx
nginx -c /etc/nginx/bench.conf -g 'daemon off;' &
wait-tcp 80
echo READY
wait
"#,
    },
    BenchImage {
        name: "postgres",
        packages: &[&["postgresql-15"]],
        deps: Deps::None,
        script: r#"id postgres >/dev/null 2>&1 || useradd -r -d /var/lib/postgresql postgres
mkdir -p /var/lib/postgresql/data /run/postgresql
chown -R postgres /var/lib/postgresql /run/postgresql
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
PG=/usr/lib/postgresql/15/bin
as_pg $PG/initdb -D /var/lib/postgresql/data -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
as_pg $PG/postgres -D /var/lib/postgresql/data -k /run/postgresql -c listen_addresses=127.0.0.1 -c port=5432 &
until $PG/pg_isready -q -h /run/postgresql; do sleep 0.05; done
echo READY
wait
"#,
    },
    BenchImage {
        name: "mariadb",
        packages: &[&["mariadb-server"]],
        deps: Deps::None,
        script: r#"id mysql >/dev/null 2>&1 || useradd -r -d /var/lib/mysql mysql
mkdir -p /var/lib/mysql /run/mysqld
chown -R mysql /var/lib/mysql /run/mysqld
mariadb-install-db --no-defaults --user=mysql --datadir=/var/lib/mysql --skip-test-db >/dev/null
mariadbd --no-defaults --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock --bind-address=127.0.0.1 --port=3306 &
until mariadb-admin --no-defaults --socket=/run/mysqld/mysqld.sock ping >/dev/null 2>&1; do sleep 0.05; done
echo READY
wait
"#,
    },
    BenchImage {
        name: "python",
        packages: &[&["python3"]],
        deps: Deps::Pip(&["flask==3.0.2"], &["flask==3.0.3"]),
        script: r#"python3 /app/app.py &
wait-tcp 8080
echo READY
wait
"#,
    },
    BenchImage {
        name: "pandas",
        packages: &[&["python3"]],
        deps: Deps::Pip(
            &["numpy==1.26.3", "pandas==2.1.4"],
            &["numpy==1.26.4", "pandas==2.2.2"],
        ),
        script: r#"python3 /app/report.py &
wait-tcp 8080
echo READY
wait
"#,
    },
    BenchImage {
        name: "node",
        packages: &[&["nodejs"]],
        deps: Deps::Npm(&["express@4.18.2"], &["express@4.19.2"]),
        script: r#"node /app/server.js &
wait-tcp 3000
echo READY
wait
"#,
    },
];

/// Path of the entrypoint inside every image.
pub const ENTRYPOINT: &str = "/usr/local/bin/bench-entrypoint";

/// Looks up images by name; `None` selects all of them.
pub fn select(names: Option<&[String]>) -> Result<Vec<&'static BenchImage>, String> {
    let Some(names) = names else {
        return Ok(BENCH_IMAGES.iter().collect());
    };
    names
        .iter()
        .map(|n| {
            BENCH_IMAGES.iter().find(|i| i.name == n).ok_or_else(|| {
                let known: Vec<&str> = BENCH_IMAGES.iter().map(|i| i.name).collect();
                format!("unknown image {n:?} (known: {})", known.join(", "))
            })
        })
        .collect()
}

/// The files of an image's application layer at `version`: the entrypoint,
/// the `wait-tcp` helper and the application's own files.
pub fn app_files(image: &BenchImage, version: Version) -> Vec<(String, u32, String)> {
    let tag = version.tag();
    let entrypoint = format!(
        "#!/bin/bash\n# {name} {tag}: starts the service, prints {READY} once it answers.\nset -e\nexport APP_VERSION={tag}\n{script}",
        name = image.name,
        script = image.script
    );
    let mut files = vec![
        (ENTRYPOINT[1..].to_string(), 0o755, entrypoint),
        (
            "usr/local/bin/wait-tcp".to_string(),
            0o755,
            WAIT_TCP.to_string(),
        ),
    ];
    let extra: Vec<(&str, String)> = match image.name {
        "redis" => vec![(
            "etc/redis/bench.conf",
            format!(
                "# bench {tag}\nbind 127.0.0.1\nport 6379\nprotected-mode no\nsave \"\"\nappendonly no\nmaxmemory {}\n",
                if version == Version::V1 { "256mb" } else { "512mb" }
            ),
        )],
        "nginx" => vec![
            (
                "etc/nginx/bench.conf",
                format!(
                    "# bench {tag}\nuser www-data;\nworker_processes 1;\npid /run/nginx.pid;\nerror_log stderr;\nevents {{ worker_connections 256; }}\nhttp {{\n    include /etc/nginx/mime.types;\n    access_log off;\n    server {{\n        listen 127.0.0.1:80;\n        root /usr/share/nginx/html;\n    }}\n}}\n"
                ),
            ),
            (
                "usr/share/nginx/html/index.html",
                format!("<!DOCTYPE html>\n<html><body><h1>bench {tag}</h1></body></html>\n"),
            ),
        ],
        "postgres" => vec![(
            "docker-entrypoint-initdb.d/README",
            format!("initialization scripts of bench {tag}\n"),
        )],
        "mariadb" => vec![(
            "etc/mysql/conf.d/bench.cnf",
            format!("# bench {tag}\n[mysqld]\nmax_connections = {}\n", if version == Version::V1 { 100 } else { 200 }),
        )],
        "python" => vec![
            ("app/app.py", FLASK_APP.replace("\"dev\"", &format!("\"{tag}\""))),
            (
                "app/requirements.txt",
                match image.deps {
                    Deps::Pip(v1, v2) => {
                        (if version == Version::V1 { v1 } else { v2 }).join("\n") + "\n"
                    }
                    _ => String::new(),
                },
            ),
        ],
        "pandas" => vec![
            ("app/report.py", PANDAS_APP.replace("\"dev\"", &format!("\"{tag}\""))),
            (
                "app/requirements.txt",
                match image.deps {
                    Deps::Pip(v1, v2) => {
                        (if version == Version::V1 { v1 } else { v2 }).join("\n") + "\n"
                    }
                    _ => String::new(),
                },
            ),
        ],
        "node" => vec![(
            "app/server.js",
            NODE_APP.replace("\"dev\"", &format!("\"{tag}\"")),
        )],
        _ => Vec::new(),
    };
    files.extend(
        extra
            .into_iter()
            .map(|(path, content)| (path.to_string(), 0o644, content)),
    );
    files
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_entrypoint_prints_ready_and_versions_differ() {
        for image in BENCH_IMAGES {
            let v1 = app_files(image, Version::V1);
            let v2 = app_files(image, Version::V2);
            assert!(image.script.contains("echo READY"), "{}", image.name);
            assert_eq!(v1[0].0, "usr/local/bin/bench-entrypoint");
            assert_ne!(v1, v2, "{}: the app layer must change", image.name);
        }
        assert!(BENCH_IMAGES.len() >= 6);
    }

    #[test]
    fn select_rejects_unknown_names() {
        assert_eq!(select(None).unwrap().len(), BENCH_IMAGES.len());
        assert!(select(Some(&["nope".into()]))
            .unwrap_err()
            .contains("redis"));
    }
}
