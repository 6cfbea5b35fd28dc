//! The images of the benchmark corpus: a Debian bookworm `minbase` base
//! layer, then layers of Debian packages and small application files, as
//! the official images and typical Dockerfiles layer them.

/// A file an application layer adds: path (relative), mode, content.
pub type AppFile = (&'static str, u32, &'static str);

/// One layer on top of the base.
#[derive(Debug, Clone, Copy)]
pub struct LayerSpec {
    /// Unique layer name (also its file name in the cache).
    pub name: &'static str,
    /// Packages installed by this layer (with their dependencies not yet
    /// present), as `apt-get install --no-install-recommends` would.
    pub packages: &'static [&'static str],
    /// Files copied in by this layer.
    pub files: &'static [AppFile],
}

/// An image: the base layer followed by `layers`.
#[derive(Debug, Clone, Copy)]
pub struct ImageSpec {
    /// Image name.
    pub name: &'static str,
    /// Layers above the base, bottom first.
    pub layers: &'static [LayerSpec],
}

/// Name of the shared base layer.
pub const BASE_LAYER: &str = "debian-bookworm-minbase";

const FLASK_APP: &str = r#"import os

from flask import Flask, jsonify

app = Flask(__name__)


@app.route("/")
def index():
    return jsonify(status="ok", host=os.uname().nodename)


@app.route("/healthz")
def healthz():
    return "ok\n"


if __name__ == "__main__":
    print("ready", flush=True)
    app.run(host="0.0.0.0", port=int(os.environ.get("PORT", "8080")))
"#;

const GUNICORN_CONF: &str = "bind = \"0.0.0.0:8080\"\nworkers = 2\naccesslog = \"-\"\n";

const NGINX_SITE: &str = r#"server {
    listen 80 default_server;
    root /usr/share/nginx/html;
    index index.html;
    location / {
        try_files $uri $uri/ =404;
    }
}
"#;

const NGINX_INDEX: &str = "<!DOCTYPE html>\n<html><head><title>Welcome</title></head>\n<body><h1>It works</h1></body></html>\n";

const NGINX_ENTRYPOINT: &str = "#!/bin/sh\nset -e\necho ready\nexec nginx -g 'daemon off;'\n";

/// Every image of the corpus.
pub const IMAGES: &[ImageSpec] = &[
    ImageSpec {
        name: "python",
        layers: &[
            LayerSpec {
                name: "python3",
                packages: &["python3", "python3-pip", "python3-venv"],
                files: &[],
            },
            LayerSpec {
                name: "python-app",
                packages: &["python3-flask", "gunicorn"],
                files: &[
                    ("app/app.py", 0o644, FLASK_APP),
                    ("app/gunicorn.conf.py", 0o644, GUNICORN_CONF),
                    ("app/requirements.txt", 0o644, "flask\ngunicorn\n"),
                ],
            },
        ],
    },
    ImageSpec {
        name: "nginx",
        layers: &[
            LayerSpec {
                name: "nginx",
                packages: &["nginx", "ca-certificates"],
                files: &[],
            },
            LayerSpec {
                name: "nginx-site",
                packages: &[],
                files: &[
                    ("etc/nginx/conf.d/default.conf", 0o644, NGINX_SITE),
                    ("usr/share/nginx/html/index.html", 0o644, NGINX_INDEX),
                    ("docker-entrypoint.sh", 0o755, NGINX_ENTRYPOINT),
                ],
            },
        ],
    },
    ImageSpec {
        name: "redis",
        layers: &[LayerSpec {
            name: "redis",
            packages: &["redis-server"],
            files: &[],
        }],
    },
    ImageSpec {
        name: "node",
        layers: &[LayerSpec {
            name: "node",
            packages: &["nodejs", "npm"],
            files: &[],
        }],
    },
];

/// Looks up images by name; `None` selects all of them.
pub fn select(names: Option<&[String]>) -> Result<Vec<&'static ImageSpec>, String> {
    let Some(names) = names else {
        return Ok(IMAGES.iter().collect());
    };
    names
        .iter()
        .map(|n| {
            IMAGES.iter().find(|i| i.name == n).ok_or_else(|| {
                let known: Vec<&str> = IMAGES.iter().map(|i| i.name).collect();
                format!("unknown image {n:?} (known: {})", known.join(", "))
            })
        })
        .collect()
}

/// Layer names of `image`, bottom first, the base included.
pub fn layer_names(image: &ImageSpec) -> Vec<&'static str> {
    std::iter::once(BASE_LAYER)
        .chain(image.layers.iter().map(|l| l.name))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn layer_names_are_unique_and_start_with_the_base() {
        let mut seen = HashSet::new();
        for image in IMAGES {
            let names = layer_names(image);
            assert_eq!(names[0], BASE_LAYER);
            for name in &names[1..] {
                assert!(seen.insert(*name), "layer {name} used twice");
                assert_ne!(*name, BASE_LAYER);
            }
        }
    }

    #[test]
    fn selects_by_name_and_rejects_unknown() {
        assert_eq!(select(None).unwrap().len(), IMAGES.len());
        let picked = select(Some(&["nginx".to_string(), "python".to_string()])).unwrap();
        assert_eq!(
            picked.iter().map(|i| i.name).collect::<Vec<_>>(),
            ["nginx", "python"]
        );
        let err = select(Some(&["nope".to_string()])).unwrap_err();
        assert!(err.contains("nope") && err.contains("python"), "{err}");
    }
}
