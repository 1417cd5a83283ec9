import RoleProtocol

/// Whom the vault lets in: holders of one credential (ttyd's AuthToken form; nil: everyone),
/// or the web users of a users file.
public enum VaultAuthentication: Sendable, Equatable {
    case credential([UInt8]?)
    case users(WebUsers)

    var message: SupervisorToVault {
        switch self {
        case .credential(let token): return .configure(credential: token)
        case .users(let users): return .configureUsers(users)
        }
    }
}
