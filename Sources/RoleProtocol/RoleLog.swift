import Logging

#if canImport(Glibc)
import Glibc
#endif

/// Every process logs one line per event on stderr, with metadata. A sandboxed role's stderr
/// is a pipe the supervisor relays; a role's logger names its role and pid.
public enum RoleLog {
    public static func bootstrap() {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .info
            return handler
        }
    }

    public static func logger(_ role: Role) -> Logger {
        var logger = Logger(label: "cloister.\(role)")
        logger[metadataKey: "role"] = "\(role)"
        logger[metadataKey: "pid"] = "\(getpid())"
        return logger
    }
}
