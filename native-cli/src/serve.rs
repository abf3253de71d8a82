//! `resnet-native serve`: the drop-an-image page on a local HTTP server. It
//! serves only its own files: the page (`web/www`), the wasm package
//! (`web/pkg`, built by `scripts/build-web.sh`) and one model file.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// Model the page opens on (a `.safetensors` written by `train` or `import`).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../weights/cifar10-resnet20.safetensors"))]
    pub weights: PathBuf,
    /// Folder holding `www/` (the page) and `pkg/` (the wasm package).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../web"))]
    pub web: PathBuf,
    /// Address to listen on; the default is reachable from this machine only.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("{0} is missing: build the wasm package first with scripts/build-web.sh")]
    NoPackage(PathBuf),
    #[error("{0} is missing: is --web the repository's web/ folder?")]
    NoPage(PathBuf),
    #[error("model {0} is missing: train one, or pass --weights")]
    NoModel(PathBuf),
    #[error("cannot listen on {address}: {message}")]
    Listen { address: String, message: String },
}

/// A running server; it stops when dropped.
pub struct Server {
    http: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub address: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.http.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Server {
    /// Checks the files and starts serving on a background thread.
    pub fn start(args: &ServeArgs) -> Result<Self, ServeError> {
        let page = args.web.join("www/index.html");
        if !page.is_file() {
            return Err(ServeError::NoPage(page));
        }
        let package = args.web.join("pkg/resnet_web.js");
        if !package.is_file() {
            return Err(ServeError::NoPackage(package));
        }
        if !args.weights.is_file() {
            return Err(ServeError::NoModel(args.weights.clone()));
        }
        let address = format!("{}:{}", args.host, args.port);
        let http = tiny_http::Server::http(&address).map_err(|e| ServeError::Listen {
            address: address.clone(),
            message: e.to_string(),
        })?;
        let address = http.server_addr().to_ip().ok_or_else(|| ServeError::Listen {
            address,
            message: "not an IP address".into(),
        })?;
        let http = Arc::new(http);
        let routes = Routes {
            www: args.web.join("www"),
            pkg: args.web.join("pkg"),
            model: args.weights.clone(),
        };
        let server = http.clone();
        let thread = std::thread::spawn(move || {
            for request in server.incoming_requests() {
                routes.answer(request);
            }
        });
        Ok(Self {
            http,
            thread: Some(thread),
            address,
        })
    }

    /// The page's address.
    pub fn url(&self) -> String {
        format!("http://{}/", self.address)
    }
}

struct Routes {
    www: PathBuf,
    pkg: PathBuf,
    model: PathBuf,
}

impl Routes {
    fn answer(&self, request: tiny_http::Request) {
        let path = request.url().split(['?', '#']).next().unwrap_or("/").to_string();
        let file = self.file_for(&path);
        let response = match file.as_deref().map(std::fs::read) {
            Some(Ok(body)) => {
                let kind = content_type(file.as_deref().expect("some"));
                tiny_http::Response::from_data(body)
                    .with_header(header("Content-Type", kind))
                    .with_header(header("Cache-Control", "no-cache"))
            }
            _ => tiny_http::Response::from_data(format!("not found: {path}\n").into_bytes())
                .with_status_code(404)
                .with_header(header("Content-Type", "text/plain; charset=utf-8")),
        };
        // A client that went away is not the server's problem.
        let _ = request.respond(response);
    }

    /// The file behind a URL path; `None` for anything outside the served set.
    fn file_for(&self, path: &str) -> Option<PathBuf> {
        match path {
            "/" | "/index.html" => Some(self.www.join("index.html")),
            "/model.safetensors" => Some(self.model.clone()),
            _ => {
                let (dir, rest) = match path.strip_prefix("/pkg/") {
                    Some(rest) => (&self.pkg, rest),
                    None => (&self.www, path.trim_start_matches('/')),
                };
                let relative = Path::new(rest);
                let safe = relative.components().all(|c| matches!(c, Component::Normal(_)));
                (safe && !rest.is_empty()).then(|| dir.join(relative))
            }
        }
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "wasm" => "application/wasm",
        "png" => "image/png",
        "ts" | "md" | "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        Routes {
            www: "/w".into(),
            pkg: "/p".into(),
            model: "/m.safetensors".into(),
        }
    }

    #[test]
    fn only_the_page_the_package_and_the_model_are_served() {
        let r = routes();
        assert_eq!(r.file_for("/"), Some("/w/index.html".into()));
        assert_eq!(r.file_for("/app.js"), Some("/w/app.js".into()));
        assert_eq!(
            r.file_for("/pkg/resnet_web_bg.wasm"),
            Some("/p/resnet_web_bg.wasm".into())
        );
        assert_eq!(r.file_for("/model.safetensors"), Some("/m.safetensors".into()));
        for escape in ["/../etc/passwd", "/pkg/../../secret", "/pkg/", "/a/../../b"] {
            assert_eq!(r.file_for(escape), None, "{escape}");
        }
        assert_eq!(content_type(Path::new("a.wasm")), "application/wasm");
    }

    #[test]
    fn a_missing_package_says_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("www")).unwrap();
        std::fs::write(dir.path().join("www/index.html"), "<!doctype html>").unwrap();
        let args = ServeArgs {
            weights: dir.path().join("model.safetensors"),
            web: dir.path().to_owned(),
            host: "127.0.0.1".into(),
            port: 0,
        };
        let err = Server::start(&args).err().unwrap().to_string();
        assert!(err.contains("scripts/build-web.sh"), "{err}");
        std::fs::create_dir_all(dir.path().join("pkg")).unwrap();
        std::fs::write(dir.path().join("pkg/resnet_web.js"), "").unwrap();
        let err = Server::start(&args).err().unwrap().to_string();
        assert!(err.contains("--weights"), "{err}");
        std::fs::write(&args.weights, "x").unwrap();
        let server = Server::start(&args).unwrap();
        let body = ureq::get(&format!("{}index.html", server.url()))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap();
        assert_eq!(body, "<!doctype html>");
        let missing = ureq::get(&format!("{}nothing.js", server.url())).call();
        assert!(matches!(missing, Err(ureq::Error::StatusCode(404))), "{missing:?}");
    }
}
