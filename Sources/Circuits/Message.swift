/// One message received on a circuit.
public struct Message: Sendable {
    public var payload: [UInt8]
    /// Descriptors that came with it; closed automatically unless taken.
    public var descriptors: ReceivedDescriptors?
    /// The peer's last message in this conversation.
    public var isEnd: Bool

    var cost: Int
}

/// A first-in first-out queue with O(1) amortised push and pop.
struct FIFO<Element> {
    private var items: [Element?] = []
    private var head = 0

    var isEmpty: Bool { head == items.count }
    var count: Int { items.count - head }

    mutating func push(_ item: Element) { items.append(item) }

    mutating func pop() -> Element? {
        guard head < items.count else { return nil }
        defer {
            items[head] = nil
            head += 1
            if head == items.count { items.removeAll(keepingCapacity: true); head = 0 }
            else if head > 64 && head * 2 > items.count { items.removeFirst(head); head = 0 }
        }
        return items[head]
    }

    /// Everything queued, oldest first, left in place.
    func peekAll() -> [Element] { items[head...].compactMap { $0 } }

    mutating func removeAll() -> [Element] {
        defer { items.removeAll(); head = 0 }
        return items[head...].compactMap { $0 }
    }
}
