import NIOCore

/// Whether one client connection has presented a credential the vault accepted: said once,
/// to the supervisor, which counts the connections that have not (`Admission`), and owed by
/// a deadline, after which the connection is closed. Confined to the connection's event loop.
package final class ClientAuthentication: @unchecked Sendable {
    private var said = false
    private var deadline: Scheduled<Void>?
    private let report: @Sendable () -> Void

    init(report: @escaping @Sendable () -> Void) { self.report = report }

    /// Closes `channel` at `after` unless the vault has accepted a credential by then.
    func closeUnlessAccepted(_ channel: Channel, after: TimeAmount) {
        deadline = channel.eventLoop.scheduleTask(in: after) { [weak channel] in
            guard !self.said else { return }
            channel?.close(promise: nil)
        }
    }

    /// The vault accepted the connection's credential (a page request's, or an attachment's).
    func accepted() {
        guard !said else { return }
        said = true
        deadline?.cancel()
        deadline = nil
        report()
    }
}
