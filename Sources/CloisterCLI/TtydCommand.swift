import ArgumentParser
import FoundationEssentials

#if canImport(Glibc)
import Glibc
#endif

/// `cloister ttyd [ttyd's options] COMMAND [ARGS…]`: ttyd 1.7.7's command line, with its
/// short and long names, run as the equivalent `cloister serve`, so that a unit or a script
/// written for ttyd works by changing the binary's name. Where ttyd's default is the stricter
/// one it is kept (read-only unless -W, the address ttyd binds); where Cloister's is, it is
/// kept and said, one line per difference, naming what restores ttyd's behaviour.
struct TtydCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ttyd",
        abstract: "Run with ttyd 1.7.7's command line (the same options), as the equivalent cloister serve.",
        discussion: """
        Differences from ttyd are printed at start, one line each. -S -C -K serve TLS with the key \
        in Cloister's keyholder; client certificates (-A) are refused. Cloister's \
        --control-socket is accepted as well.
        """)

    @Option(name: [.customShort("p"), .long], help: "Port to listen (default: 7681, use `0` for random port)")
    var port: Int = 7681
    @Option(name: [.customShort("i"), .long], help: "Network interface to bind (eg: eth0), or UNIX domain socket path (eg: /var/run/ttyd.sock)")
    var interface: String?
    @Option(name: [.customShort("U"), .long], help: "User owner of the UNIX domain socket file, when enabled (eg: user:group)")
    var socketOwner: String?
    @Option(name: [.customShort("c"), .long], help: "Credential for basic authentication (format: username:password)")
    var credential: String?
    @Option(name: [.customShort("H"), .long], help: "HTTP Header name for auth proxy")
    var authHeader: String?
    @Option(name: [.customShort("u"), .long], help: "User id to run with") var uid: UInt32?
    @Option(name: [.customShort("g"), .long], help: "Group id to run with") var gid: UInt32?
    @Option(name: [.customShort("s"), .long], help: "Signal to send to the command when exit it (default: 1, SIGHUP)")
    var signal: String?
    @Option(name: [.customShort("w"), .long], help: "Working directory to be set for the child program") var cwd: String?
    @Flag(name: [.customShort("a"), .long], help: "Allow client to send command line arguments in URL") var urlArg = false
    @Flag(name: [.customShort("W"), .long], help: "Allow clients to write to the TTY (readonly by default)") var writable = false
    @Option(name: [.customShort("t"), .long], help: "Send option to client (format: key=value), repeat to add more options")
    var clientOption: [String] = []
    @Option(name: [.customShort("T"), .long], help: "Terminal type to report, default: xterm-256color") var terminalType: String?
    @Flag(name: [.customShort("O"), .long], help: "Do not allow websocket connection from different origin") var checkOrigin = false
    @Option(name: [.customShort("m"), .long], help: "Maximum clients to support (default: 0, no limit)") var maxClients: Int = 0
    @Flag(name: [.customShort("o"), .long], help: "Accept only one client and exit on disconnection") var once = false
    @Flag(name: [.customShort("q"), .customLong("exit-no-conn")], help: "Exit on all clients disconnection") var exitNoConn = false
    @Flag(name: [.customShort("B"), .long], help: "Open terminal with the default system browser") var browser = false
    @Option(name: [.customShort("I"), .long], help: "Custom index.html path") var index: String?
    @Option(name: [.customShort("b"), .long], help: "Expected base path for requests coming from a reverse proxy") var basePath: String?
    @Option(name: [.customShort("P"), .long], help: "Websocket ping interval(sec) (default: 5)") var pingInterval: Int = 5
    @Flag(name: [.customShort("6"), .long], help: "Enable IPv6 support") var ipv6 = false
    @Flag(name: [.customShort("S"), .long], help: "Enable SSL") var ssl = false
    @Option(name: [.customShort("C"), .long], help: "SSL certificate file path") var sslCert: String?
    @Option(name: [.customShort("K"), .long], help: "SSL key file path") var sslKey: String?
    @Option(name: [.customShort("A"), .long], help: "SSL CA file path for client certificate verification") var sslCa: String?
    @Option(name: [.customShort("d"), .long], help: "Set log level (default: 7)") var debug: Int?
    @Flag(name: [.customShort("v"), .long], help: "Print the version and exit") var version = false
    @Option(help: "Cloister's control socket (cloister serve --control-socket).") var controlSocket: String?
    @Argument(parsing: .captureForPassthrough, help: "The command and its arguments (options after it are its own).") var command: [String] = []

    struct Refused: Error, CustomStringConvertible {
        var description: String
    }

    /// `cloister serve`'s arguments, and one line per difference from ttyd.
    func translated() throws(Refused) -> (arguments: [String], differences: [String]) {
        if sslCa != nil {
            throw Refused(description: "-A: Cloister does not verify client certificates; put a reverse proxy that does in front of it (see deploy/)")
        }
        if ssl != (sslCert != nil && sslKey != nil) || (!ssl && (sslCert != nil || sslKey != nil)) {
            throw Refused(description: "-S needs -C and -K, and -C and -K need -S")
        }
        if let signal, ServeCommand.signalNumber(signal) == nil {
            throw Refused(description: "-s \(signal): not a signal name or number")
        }
        guard let executable = command.first else {
            throw Refused(description: "a command to run is required, as with ttyd: cloister ttyd [options] <command> [<arguments...>]")
        }
        // Everything from the first word that is not one of ttyd's options is the command's.
        guard !executable.hasPrefix("-") else { throw Refused(description: "\(executable): not one of ttyd's options") }
        guard (0...65535).contains(port) else { throw Refused(description: "-p \(port): not a port") }
        var arguments: [String] = []
        var differences: [String] = []

        // ttyd binds every address unless -i names an interface or a socket path.
        if let interface {
            if interface.hasSuffix(".sock") || interface.hasSuffix(".socket") {
                arguments += ["--listen", "unix:" + interface]
                if let socketOwner { arguments += ["--socket-owner", socketOwner] }
            } else {
                guard let address = Self.address(ofInterface: interface, ipv6: ipv6) else {
                    throw Refused(description: "-i \(interface): no such network interface with an IPv\(ipv6 ? 6 : 4) address")
                }
                arguments += ["--listen", address.contains(":") ? "[\(address)]:\(port)" : "\(address):\(port)"]
            }
        } else {
            arguments += ["--listen", ":\(port)"]
            if ipv6 { arguments += ["--listen", "[::]:\(port)"] }
        }

        if let sslCert, let sslKey { arguments += ["--tls-cert", sslCert, "--tls-key", sslKey] }
        if let credential { arguments += ["--credential", credential] }
        if let authHeader { arguments += ["--auth-header", authHeader] }
        if credential == nil && authHeader == nil {
            differences.append("no -c: ttyd would let anyone in; Cloister requires the one-time credential printed below (-c USER:PASSWORD sets your own)")
        }
        if let uid {
            guard let user = getpwuid(uid) else { throw Refused(description: "-u \(uid): no such user") }
            arguments += ["--user", String(cString: user.pointee.pw_name)]
        }
        if let gid {
            guard let group = getgrgid(gid) else { throw Refused(description: "-g \(gid): no such group") }
            arguments += ["--group", String(cString: group.pointee.gr_name)]
        }
        if let cwd { arguments += ["--cwd", cwd] }
        if let signal { arguments += ["--signal", signal] }
        if urlArg { arguments.append("--url-arg") }
        if !writable { arguments.append("--read-only") }
        for option in clientOption { arguments += ["--client-option", option] }
        if let terminalType { arguments += ["--terminal-type", terminalType] }
        if !checkOrigin {
            differences.append("no -O: Cloister still refuses WebSockets from another origin; `cloister serve --no-check-origin` allows them as ttyd does")
        }
        if maxClients > 0 {
            arguments += ["--max-clients", "\(maxClients)"]
        } else {
            differences.append("-m 0: ttyd takes any number of clients; Cloister takes 1024 (-m N sets another limit)")
        }
        if once { arguments.append("--once") }
        if exitNoConn { arguments.append("--exit-no-clients") }
        if browser { differences.append("-B: no browser is opened; open the address printed below") }
        if let index { arguments += ["--index", index] }
        if let basePath { arguments += ["--base-path", basePath] }
        arguments += ["--ping-interval", "\(pingInterval)"]
        if debug != nil { differences.append("-d: ignored; Cloister logs one structured line per event") }
        if let controlSocket { arguments += ["--control-socket", controlSocket] }
        return (arguments + ["--"] + command, differences)
    }

    /// The first address of a network interface (ttyd's -i eth0).
    static func address(ofInterface name: String, ipv6: Bool) -> String? {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return nil }
        defer { freeifaddrs(list) }
        var entry = list
        while let current = entry {
            defer { entry = current.pointee.ifa_next }
            guard String(cString: current.pointee.ifa_name) == name, let address = current.pointee.ifa_addr,
                  Int32(address.pointee.sa_family) == (ipv6 ? AF_INET6 : AF_INET) else { continue }
            var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            let size = socklen_t(ipv6 ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size)
            guard getnameinfo(address, size, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) == 0 else { continue }
            let text = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            // A link-local IPv6 address names its interface after %; Cloister binds numeric hosts.
            if ipv6 && text.contains("%") { continue }
            return text
        }
        return nil
    }

    func run() async throws {
        if command.first == "-h" || command.first == "--help" {
            print(Self.helpMessage())
            return
        }
        if version {
            print("cloister \(Version.version) (ttyd 1.7.7's command line)")
            return
        }
        let arguments: [String], differences: [String]
        do {
            (arguments, differences) = try translated()
        } catch {
            printToStandardError("cloister ttyd: \(error)\n")
            throw ExitCode(2)
        }
        for difference in differences { print("cloister ttyd: differs from ttyd: \(difference)") }
        let serve = try ServeCommand.parse(arguments)
        try await serve.run()
    }
}
