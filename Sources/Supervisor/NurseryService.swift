import Circuits
import Processes
import RoleProtocol
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Where a vault's shells come from.
public enum NurserySource: Sendable, Equatable {
    /// A nursery this supervisor spawns for each vault (`cloister role nursery`).
    case spawn(NurseryShells)
    /// The nursery service listening at `socket` (`cloister nursery`, usually in a unit of its
    /// own): each vault gets a new connection to it.
    case service(socket: String)

    /// What `ctl sessions` shows as the shells' command.
    var commandDescription: String {
        switch self {
        case .spawn(let shells): return shells.command.joined(separator: " ")
        case .service(let socket): return "(nursery service at \(socket))"
        }
    }
}

/// A vault's nursery as the supervisor holds it: ended by `stop`, and reported through the
/// `ended` callback it was made with if it goes first.
protocol NurseryLink: Sendable {
    func stop() async
}

/// A connection to the nursery service for one vault. The vault gets the connected socket;
/// the supervisor keeps a duplicate of it only to see the service hang up (the vault is then
/// restarted with a new connection) and to end the link when the vault ends.
final class NurseryServiceConnection: NurseryLink {
    private let watched: FileDescriptor
    private let wake: (read: FileDescriptor, write: FileDescriptor)
    private let watcher: Task<Void, Never>

    /// Connects to `socket`, checks that the service runs as root or as this process's user
    /// (`SO_PEERCRED`: no one else can have made the socket the vault would trust), and
    /// returns the vault's end. `hungUp` runs once if the service closes the link first.
    static func connect(_ socket: String, hungUp: @escaping @Sendable () -> Void) throws -> (NurseryServiceConnection, vaultEnd: FileDescriptor) {
        let vaultEnd: FileDescriptor
        do {
            vaultEnd = try UnixSocket.connect(path: socket, kind: .seqpacket)
        } catch {
            throw SystemCallError(call: error.call, errno: error.errno, detail: "the nursery service at \(socket) (is it running?)")
        }
        do {
            let peer = try UnixSocket.Listener.peerCredentials(vaultEnd)
            guard peer.uid == 0 || peer.uid == geteuid() else {
                throw SystemCallError(call: "getsockopt(SO_PEERCRED)", errno: .permissionDenied,
                                      detail: "the nursery socket \(socket) belongs to uid \(peer.uid), neither root nor \(geteuid())")
            }
            let watched = FileDescriptor(rawValue: try valueOrErrno("fcntl(F_DUPFD_CLOEXEC)", detail: socket) {
                fcntl(vaultEnd.rawValue, F_DUPFD_CLOEXEC, 0)
            })
            let wake: (FileDescriptor, FileDescriptor)
            do {
                wake = try SocketCalls.socketPair(.stream)
            } catch {
                try? watched.close()
                throw error
            }
            let connection = NurseryServiceConnection(watched: watched, wake: (wake.0, wake.1), hungUp: hungUp)
            return (connection, vaultEnd)
        } catch {
            try? vaultEnd.close()
            throw error
        }
    }

    private init(watched: FileDescriptor, wake: (read: FileDescriptor, write: FileDescriptor), hungUp: @escaping @Sendable () -> Void) {
        self.watched = watched
        self.wake = wake
        watcher = Task { [watched, wake] in
            // Events 0: only POLLHUP or POLLERR, never the vault's own traffic on the socket.
            let serviceHungUp = (try? await onOwnThread { () -> Bool in
                var fds = [pollfd(fd: watched.rawValue, events: 0, revents: 0),
                           pollfd(fd: wake.read.rawValue, events: Int16(POLLIN), revents: 0)]
                let n = (try? valueOrErrno("poll") { poll(&fds, 2, -1) }) ?? 0
                return n > 0 && fds[1].revents == 0
            }) ?? false
            if serviceHungUp { hungUp() }
        }
    }

    /// Ends the link: the service sees it close once the vault's end is gone too.
    func stop() async {
        _ = try? wake.write.writeAll([UInt8(1)])
        await watcher.value
        try? watched.close()
        try? wake.read.close()
        try? wake.write.close()
    }
}
