//! A small CRI v1 client for the tests (crictl is not packaged here): the
//! `k8s-cri` bindings over containerd's socket, enough to pull an image and
//! run a container in a host-network pod sandbox (no CNI plugin needed), and
//! the containerd configuration that points the CRI plugin at the
//! `starlight` snapshotter.
#![allow(dead_code, clippy::unwrap_used)]

pub mod images;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_client::tonic::transport::Channel;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PullImageRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};

/// The CRI plugin's settings for containerd 1.6's config (version 2):
/// images pulled for the `starlight` snapshotter with the snapshot
/// annotations on, `registry` reached over plain HTTP, `sandbox_image` as
/// the pause image (AppArmor off and the OOM score capped: test hosts).
pub fn cri_config(registry: &str, sandbox_image: &str, cni_dir: &Path) -> String {
    format!(
        r#"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  disable_apparmor = true
  # Sandboxed test hosts refuse a lower oom_score_adj (CRI sets -998 on
  # pod sandboxes): keep containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "starlight"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni}/bin"
    conf_dir = "{cni}/conf"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry}"]
    endpoint = ["http://{registry}"]
"#,
        cni = cni_dir.display(),
    )
}

/// The host's namespaces for network, the pod's for pid and ipc.
fn host_network() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A CRI client on containerd's socket.
pub struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// A pod sandbox started by [`Cri::run_pod`].
pub struct Pod {
    /// Its id.
    pub id: String,
    /// The config it was started with.
    pub config: PodSandboxConfig,
    /// Where its containers' logs go.
    pub log_dir: PathBuf,
}

impl Cri {
    /// Connects to containerd's socket.
    pub async fn connect(socket: &Path) -> Cri {
        let channel = containerd_client::connect(socket.to_path_buf())
            .await
            .unwrap();
        Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        }
    }

    /// `PullImage`: returns the image id containerd answers.
    pub async fn pull(&mut self, image: &str) -> Result<String, String> {
        let r = self
            .images
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map_err(|s| format!("PullImage {image}: {s}"))?;
        Ok(r.into_inner().image_ref)
    }

    /// `RunPodSandbox` of a host-network pod named `name`, logging below
    /// `log_dir`.
    pub async fn run_pod(&mut self, name: &str, log_dir: &Path) -> Result<Pod, String> {
        std::fs::create_dir_all(log_dir).unwrap();
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("uid-{name}"),
                namespace: "starlight-test".into(),
                attempt: 0,
            }),
            // Host network shares the host's UTS namespace: no hostname.
            hostname: String::new(),
            log_directory: log_dir.display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = self
            .runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .map_err(|s| format!("RunPodSandbox: {s}"))?;
        Ok(Pod {
            id: r.into_inner().pod_sandbox_id,
            config,
            log_dir: log_dir.to_path_buf(),
        })
    }

    /// `CreateContainer` + `StartContainer` of `image` running `command`
    /// in `pod`; returns the container's log file.
    pub async fn start_container(
        &mut self,
        pod: &Pod,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> Result<PathBuf, String> {
        let log = format!("{name}.log");
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: log.clone(),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self
            .runtime
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            })
            .await
            .map_err(|s| format!("CreateContainer {name}: {s}"))?
            .into_inner()
            .container_id;
        self.runtime
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .map_err(|s| format!("StartContainer {name}: {s}"))?;
        Ok(pod.log_dir.join(log))
    }

    /// `StopPodSandbox` + `RemovePodSandbox`: its containers go too.
    pub async fn remove_pod(&mut self, id: &str) -> Result<(), String> {
        self.runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .map_err(|s| format!("StopPodSandbox: {s}"))?;
        self.runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .map_err(|s| format!("RemovePodSandbox: {s}"))?;
        Ok(())
    }
}

/// Removes a pod sandbox (and so its containers) on drop, so no container
/// outlives the test.
pub struct PodGuard {
    pub socket: PathBuf,
    pub id: String,
}

impl Drop for PodGuard {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let socket = self.socket.clone();
        let id = self.id.clone();
        let _ = std::thread::spawn(move || {
            rt.block_on(async {
                let bounded = tokio::time::timeout(Duration::from_secs(60), async {
                    Cri::connect(&socket).await.remove_pod(&id).await
                });
                if let Ok(Err(e)) = bounded.await {
                    eprintln!("removing pod {id}: {e}");
                }
            })
        })
        .join();
    }
}

/// Waits (at most `secs` seconds) until the CRI log `log` has a line whose
/// message is `line`; returns the log's messages.
pub fn wait_for_line(log: &Path, line: &str, secs: u64) -> Result<Vec<String>, String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        // CRI log lines: `<time> <stream> <P|F> <message>`.
        let messages: Vec<String> = std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_string))
            .collect();
        if messages.iter().any(|m| m == line) {
            return Ok(messages);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no line {line:?} in {} within {secs} s; it has {messages:?}",
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
