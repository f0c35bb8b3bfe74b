//! The route table: every public method, what it needs to be called. The gate consults it for
//! every call and refuses methods it does not list, so a method added to the contract without a
//! row here is unreachable — and the tests below fail the build.

/// What a caller must present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Login flows: no token (limited per source address instead).
    Anonymous,
    /// A valid access token with this scope.
    Token(&'static str),
    /// As `Token`, plus a recent step-up authentication (RFC 9470) for high-risk methods.
    StepUp(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// gRPC path, `/package.Service/Method`.
    pub path: &'static str,
    pub access: Access,
}

pub const ROUTES: &[Route] = &[
    Route {
        path: "/keel.v1.AuthenticationService/Login",
        access: Access::Anonymous,
    },
    Route {
        path: "/keel.v1.AuthenticationService/VerifyMfa",
        access: Access::Anonymous,
    },
    Route {
        path: "/keel.v1.AuthenticationService/Refresh",
        access: Access::Anonymous,
    },
    Route {
        path: "/keel.v1.AuthenticationService/Logout",
        access: Access::Anonymous,
    },
    Route {
        path: "/keel.v1.AuthenticationService/EnrollMfa",
        access: Access::Token("account"),
    },
    Route {
        path: "/keel.v1.AuthenticationService/ConfirmMfa",
        access: Access::Token("account"),
    },
    Route {
        path: "/keel.v1.AuthenticationService/DisableMfa",
        access: Access::Token("account"),
    },
    Route {
        path: "/keel.v1.AuthenticationService/StepUp",
        access: Access::Token("account"),
    },
    Route {
        path: "/keel.v1.AuthenticationService/SignOutEverywhere",
        access: Access::Token("account"),
    },
    Route {
        path: "/keel.v1.AuthenticationService/ListSessions",
        access: Access::Token("account"),
    },
    Route {
        path: "/keel.v1.AuthenticationService/RevokeSession",
        access: Access::Token("account"),
    },
    Route {
        path: "/keel.v1.AuthenticationService/ChangePassword",
        access: Access::Token("account"),
    },
    Route {
        path: "/keel.v1.DocumentService/CreateDocument",
        access: Access::Token("documents:write"),
    },
    Route {
        path: "/keel.v1.DocumentService/GetDocument",
        access: Access::Token("documents:read"),
    },
    Route {
        path: "/keel.v1.DocumentService/ListDocuments",
        access: Access::Token("documents:read"),
    },
    Route {
        path: "/keel.v1.DocumentService/UpdateDocument",
        access: Access::Token("documents:write"),
    },
    Route {
        path: "/keel.v1.DocumentService/DeleteDocument",
        access: Access::Token("documents:write"),
    },
    Route {
        path: "/keel.v1.InferenceService/Generate",
        access: Access::Token("inference"),
    },
    Route {
        path: "/keel.v1.InferenceService/Complete",
        access: Access::Token("inference"),
    },
    Route {
        path: "/keel.v1.InferenceService/Embed",
        access: Access::Token("inference"),
    },
    Route {
        path: "/keel.v1.ModelService/ListModels",
        access: Access::Token("models:read"),
    },
    Route {
        path: "/keel.v1.ModelService/ExportModel",
        access: Access::StepUp("models:export"),
    },
    Route {
        path: "/keel.v1.UsageService/GetUsage",
        access: Access::Token("usage:read"),
    },
    Route {
        path: "/keel.v1.AuditService/ListAuditEvents",
        access: Access::Token("tenant:admin"),
    },
    Route {
        path: "/keel.v1.ModerationService/ListModerationResults",
        access: Access::Token("tenant:admin"),
    },
];

/// Infrastructure methods every server answers without credentials.
pub const UNGATED_PREFIXES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
];

pub fn lookup(path: &str) -> Option<&'static Route> {
    ROUTES.iter().find(|r| r.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Every method of every `keel.v1` service, read from the compiled contracts.
    fn public_methods() -> Vec<String> {
        let fds = prost_types::FileDescriptorSet::decode(keel_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut out = Vec::new();
        for file in fds.file.iter().filter(|f| f.package() == "keel.v1") {
            for svc in &file.service {
                for m in &svc.method {
                    out.push(format!("/keel.v1.{}/{}", svc.name(), m.name()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn every_public_method_has_exactly_one_route() {
        let methods = public_methods();
        assert!(
            methods.len() >= 15,
            "descriptor walk found too few methods: {methods:?}"
        );
        for m in &methods {
            let n = ROUTES.iter().filter(|r| r.path == m).count();
            assert_eq!(n, 1, "{m} must appear exactly once in ROUTES");
        }
        for r in ROUTES {
            assert!(
                methods.iter().any(|m| m == r.path),
                "{} is not in the contract",
                r.path
            );
        }
    }

    #[test]
    fn only_login_flows_are_anonymous() {
        for r in ROUTES {
            if r.access == Access::Anonymous {
                assert!(
                    ["Login", "VerifyMfa", "Refresh", "Logout"]
                        .iter()
                        .any(|m| r.path.ends_with(&format!("/{m}"))),
                    "{} must require a token",
                    r.path
                );
                assert!(
                    r.path.starts_with("/keel.v1.AuthenticationService/"),
                    "{} must require a token",
                    r.path
                );
            }
        }
        assert_eq!(
            lookup("/keel.v1.ModelService/ExportModel").unwrap().access,
            Access::StepUp("models:export")
        );
    }
}
