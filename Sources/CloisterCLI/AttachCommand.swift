import ArgumentParser
import FoundationEssentials
import Supervisor
import TerminalClient

#if canImport(Glibc)
import Glibc
#endif

/// `cloister attach URL`: this terminal as a session's terminal (see `InteractiveAttach`).
struct AttachCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attach",
        abstract: "Use a Cloister session from this terminal; resumes by itself after a dropped connection.",
        discussion: """
        The credential (USER:PASSWORD) comes from --credential-file or $CLOISTER_CREDENTIAL, \
        never from the command line, which every local user can read. To join a session, give \
        --session and its secret through --secret-file or $CLOISTER_SESSION_SECRET. The exit \
        status is the shell's (128 + its signal when a signal ended it). With https:// (or \
        wss://) the server's certificate is checked against the system's trust store and \
        --tls-ca, and against the host: its name, or its address when an address is given.
        """)

    @Argument(help: "The server, as http://HOST:PORT/ or https://HOST:PORT/ (a numeric address, or localhost).") var url: String
    @Option(help: "With https: a PEM file of certificates to trust besides the system's (a server's own CA).") var tlsCa: String?
    @Option(help: "A file holding USER:PASSWORD (one line, not readable by group or others).") var credentialFile: String?
    @Option(help: "The session to join (without it, a new session starts).") var session: String?
    @Option(help: "A file holding the session's secret (one line, not readable by group or others).") var secretFile: String?
    @Flag(help: "Join without writing, even with the writing secret.") var readonly = false

    struct Target: Equatable {
        /// What the client connects to (an address).
        var host: String
        var port: UInt16
        /// Over TLS; the certificate must name `serverName`, or the address when it is nil.
        var tls: Bool = false
        var serverName: String?
    }

    /// http://, https://, ws:// or wss://HOST:PORT/…; the host numeric or localhost.
    static func target(_ url: String) throws -> Target {
        guard let parts = URLComponents(string: url), let scheme = parts.scheme?.lowercased(),
              ["http", "ws", "https", "wss"].contains(scheme), let host = parts.host, !host.isEmpty else {
            throw ValidationError("\(url) is not http://HOST:PORT/ or https://HOST:PORT/")
        }
        let numeric = host == "localhost" ? "127.0.0.1" : host
        guard numeric.split(separator: ".").count == 4 || numeric.contains(":") else {
            throw ValidationError("\(url): the host must be a numeric address or localhost")
        }
        let port = parts.port ?? 7681
        guard (1...65535).contains(port) else { throw ValidationError("\(url): port \(port) is out of range") }
        let tls = scheme == "https" || scheme == "wss"
        return Target(host: numeric, port: UInt16(port), tls: tls, serverName: host == "localhost" ? host : nil)
    }

    /// The first line of a file only its owner may read, or of the environment variable.
    static func secret(file: String?, environment name: String, option: String) throws -> String? {
        if let file {
            do {
                return try CredentialFile.read(file)
            } catch {
                throw ValidationError("\(option): \(error)")
            }
        }
        return ProcessInfo.processInfo.environment[name].map { String($0.split(whereSeparator: \.isNewline).first ?? "") }
    }

    func validate() throws {
        let target = try Self.target(url)
        if tlsCa != nil && !target.tls { throw ValidationError("--tls-ca is for https:// and wss:// URLs") }
        if let tlsCa, access(tlsCa, R_OK) != 0 { throw ValidationError("--tls-ca: \(tlsCa): \(String(cString: strerror(errno)))") }
        if secretFile != nil && session == nil { throw ValidationError("--secret-file needs --session") }
    }

    func run() throws {
        let target = try Self.target(url)
        guard let credential = try Self.secret(file: credentialFile, environment: "CLOISTER_CREDENTIAL", option: "--credential-file"),
              credential.contains(":") else {
            throw ValidationError("a credential (USER:PASSWORD) is needed: --credential-file FILE or $CLOISTER_CREDENTIAL")
        }
        var secret: String?
        if session != nil {
            secret = try Self.secret(file: secretFile, environment: "CLOISTER_SESSION_SECRET", option: "--secret-file")
            guard secret?.isEmpty == false else {
                throw ValidationError("--session needs its secret: --secret-file FILE or $CLOISTER_SESSION_SECRET")
            }
        }
        let options = InteractiveAttach.Options(host: target.host, port: target.port, token: TerminalClient.token(credential),
                                                session: session, secret: secret, readonly: readonly,
                                                tls: target.tls ? .full(extraRoots: tlsCa, serverName: target.serverName) : nil)
        let status: Int32
        do {
            status = try InteractiveAttach.run(options)
        } catch let closed as TerminalClient.Closed {
            throw ValidationError("refused: \(closed.reason.isEmpty ? "closed" : closed.reason)")
        } catch {
            throw ValidationError("cannot attach to \(url): \(error)")
        }
        throw ExitCode(status)
    }
}
