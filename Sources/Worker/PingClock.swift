import NIOCore

/// One timer for every WebSocket on an event loop: each tick pings every open connection
/// (ttyd's -P), and closes one whose ping from the tick before is still unanswered. A timer
/// per connection cost more than an idle connection's WebSocket handlers together; a
/// connection's first ping comes within one interval of its upgrade, every later one an
/// interval apart. The timer runs only while a connection is open.
///
/// Everything here belongs to its event loop.
final class PingClock: @unchecked Sendable {
    let interval: TimeAmount
    let eventLoop: EventLoop
    private var members: [ObjectIdentifier: WebSocketMessageHandler] = [:]
    private var ticking: RepeatedTask?

    init(interval: TimeAmount, eventLoop: EventLoop) {
        self.interval = interval
        self.eventLoop = eventLoop
    }

    func join(_ handler: WebSocketMessageHandler) {
        eventLoop.assertInEventLoop()
        members[ObjectIdentifier(handler)] = handler
        guard ticking == nil else { return }
        ticking = eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { [self] _ in
            for member in Array(members.values) { member.tick() }
        }
    }

    func leave(_ handler: WebSocketMessageHandler) {
        eventLoop.assertInEventLoop()
        guard members.removeValue(forKey: ObjectIdentifier(handler)) != nil, members.isEmpty else { return }
        ticking?.cancel()
        ticking = nil
    }
}
