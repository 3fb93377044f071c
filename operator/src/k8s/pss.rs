//! The Pod Security Standards "baseline" and "restricted" rules
//! (<https://kubernetes.io/docs/concepts/security/pod-security-standards/>), as checks on a
//! pod spec. Every rendered pod template must pass them; tests call [`restricted_violations`]
//! and `meshbench render` could too. Each rule names the field it reads, like the
//! admission controller's messages.

use k8s_openapi::api::core::v1::{Container, PodSpec, SeccompProfile, SecurityContext};

/// Capabilities the baseline level allows to be added.
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls the baseline level allows.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

fn all_containers(spec: &PodSpec) -> Vec<(&'static str, &Container)> {
    let mut v: Vec<(&'static str, &Container)> =
        spec.containers.iter().map(|c| ("containers", c)).collect();
    if let Some(init) = &spec.init_containers {
        v.extend(init.iter().map(|c| ("initContainers", c)));
    }
    v
}

fn seccomp_ok(p: &Option<SeccompProfile>) -> Option<bool> {
    p.as_ref()
        .map(|p| p.type_ == "RuntimeDefault" || p.type_ == "Localhost")
}

/// Violations of the baseline level.
pub fn baseline_violations(spec: &PodSpec) -> Vec<String> {
    let mut v = Vec::new();
    if spec.host_network == Some(true) {
        v.push("spec.hostNetwork must not be true".into());
    }
    if spec.host_pid == Some(true) {
        v.push("spec.hostPID must not be true".into());
    }
    if spec.host_ipc == Some(true) {
        v.push("spec.hostIPC must not be true".into());
    }
    for vol in spec.volumes.iter().flatten() {
        if vol.host_path.is_some() {
            v.push(format!(
                "spec.volumes[{}].hostPath is not allowed",
                vol.name
            ));
        }
    }
    if let Some(psc) = &spec.security_context {
        if let Some(p) = &psc.seccomp_profile
            && p.type_ == "Unconfined"
        {
            v.push("spec.securityContext.seccompProfile.type must not be Unconfined".into());
        }
        for s in psc.sysctls.iter().flatten() {
            if !SAFE_SYSCTLS.contains(&s.name.as_str()) {
                v.push(format!(
                    "spec.securityContext.sysctls {:?} is not a safe sysctl",
                    s.name
                ));
            }
        }
        if let Some(se) = &psc.se_linux_options {
            check_selinux("spec.securityContext", se, &mut v);
        }
        if let Some(aa) = &psc.app_armor_profile
            && aa.type_ == "Unconfined"
        {
            v.push("spec.securityContext.appArmorProfile.type must not be Unconfined".into());
        }
    }
    for (field, c) in all_containers(spec) {
        let at = format!("spec.{field}[{}]", c.name);
        for p in c.ports.iter().flatten() {
            if p.host_port.unwrap_or(0) != 0 {
                v.push(format!("{at}.ports.hostPort must be unset or 0"));
            }
        }
        if let Some(sc) = &c.security_context {
            if sc.privileged == Some(true) {
                v.push(format!("{at}.securityContext.privileged must not be true"));
            }
            for cap in sc.capabilities.iter().flat_map(|c| c.add.iter().flatten()) {
                if !BASELINE_CAPABILITIES.contains(&cap.as_str()) {
                    v.push(format!(
                        "{at}.securityContext.capabilities.add {cap:?} is not allowed"
                    ));
                }
            }
            if let Some(p) = &sc.seccomp_profile
                && p.type_ == "Unconfined"
            {
                v.push(format!(
                    "{at}.securityContext.seccompProfile.type must not be Unconfined"
                ));
            }
            if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
                v.push(format!("{at}.securityContext.procMount must be Default"));
            }
            if let Some(se) = &sc.se_linux_options {
                check_selinux(&format!("{at}.securityContext"), se, &mut v);
            }
            if sc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
                v.push(format!(
                    "{at}.securityContext.windowsOptions.hostProcess must not be true"
                ));
            }
        }
    }
    v
}

fn check_selinux(at: &str, se: &k8s_openapi::api::core::v1::SELinuxOptions, v: &mut Vec<String>) {
    if let Some(t) = &se.type_
        && ![
            "",
            "container_t",
            "container_init_t",
            "container_kvm_t",
            "container_engine_t",
        ]
        .contains(&t.as_str())
    {
        v.push(format!("{at}.seLinuxOptions.type {t:?} is not allowed"));
    }
    if se.user.as_deref().is_some_and(|u| !u.is_empty()) {
        v.push(format!("{at}.seLinuxOptions.user must be unset"));
    }
    if se.role.as_deref().is_some_and(|r| !r.is_empty()) {
        v.push(format!("{at}.seLinuxOptions.role must be unset"));
    }
}

/// Violations of the restricted level (which includes baseline).
pub fn restricted_violations(spec: &PodSpec) -> Vec<String> {
    let mut v = baseline_violations(spec);
    for vol in spec.volumes.iter().flatten() {
        let allowed = vol.config_map.is_some()
            || vol.csi.is_some()
            || vol.downward_api.is_some()
            || vol.empty_dir.is_some()
            || vol.ephemeral.is_some()
            || vol.persistent_volume_claim.is_some()
            || vol.projected.is_some()
            || vol.secret.is_some();
        if !allowed {
            v.push(format!(
                "spec.volumes[{}] has a type the restricted level does not allow",
                vol.name
            ));
        }
    }
    let psc = spec.security_context.as_ref();
    let pod_non_root = psc.and_then(|p| p.run_as_non_root);
    let pod_seccomp = psc.and_then(|p| seccomp_ok(&p.seccomp_profile));
    if psc.and_then(|p| p.run_as_user) == Some(0) {
        v.push("spec.securityContext.runAsUser must not be 0".into());
    }
    if pod_non_root == Some(false) {
        v.push("spec.securityContext.runAsNonRoot must not be false".into());
    }
    for (field, c) in all_containers(spec) {
        let at = format!("spec.{field}[{}].securityContext", c.name);
        let default = SecurityContext::default();
        let sc = c.security_context.as_ref().unwrap_or(&default);
        if sc.allow_privilege_escalation != Some(false) {
            v.push(format!("{at}.allowPrivilegeEscalation must be false"));
        }
        match (sc.run_as_non_root, pod_non_root) {
            (Some(true), _) | (None, Some(true)) => {}
            _ => v.push(format!(
                "{at}.runAsNonRoot must be true (here or in spec.securityContext)"
            )),
        }
        if sc.run_as_user == Some(0) {
            v.push(format!("{at}.runAsUser must not be 0"));
        }
        match (seccomp_ok(&sc.seccomp_profile), pod_seccomp) {
            (Some(true), _) | (None, Some(true)) => {}
            _ => v.push(format!(
                "{at}.seccompProfile.type must be RuntimeDefault or Localhost (here or in spec.securityContext)"
            )),
        }
        let caps = sc.capabilities.as_ref();
        if !caps
            .and_then(|c| c.drop.as_ref())
            .is_some_and(|d| d.iter().any(|x| x == "ALL"))
        {
            v.push(format!("{at}.capabilities.drop must include ALL"));
        }
        for cap in caps.and_then(|c| c.add.as_ref()).into_iter().flatten() {
            if cap != "NET_BIND_SERVICE" {
                v.push(format!(
                    "{at}.capabilities.add may only contain NET_BIND_SERVICE, not {cap:?}"
                ));
            }
        }
    }
    v
}
