extension StringProtocol where UTF8View: BidirectionalCollection {
    /// Without the optional whitespace HTTP allows around field values and list items
    /// (RFC 9110 §5.6.3: spaces and horizontal tabs). HTTP defines it on octets, and so does
    /// this: over the UTF-8 bytes (no byte of a multi-byte character is a space or a tab),
    /// not over Characters, whose grapheme breaking cost a hundred times more per header.
    func trimmingOptionalWhitespace() -> String {
        func isOWS(_ byte: UInt8) -> Bool { byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }
        let bytes = utf8
        guard let first = bytes.firstIndex(where: { !isOWS($0) }), let last = bytes.lastIndex(where: { !isOWS($0) }) else { return "" }
        return String(decoding: bytes[first...last], as: UTF8.self)
    }

    /// The items of a comma-separated field value (RFC 9110 §5.6.1), each without optional
    /// whitespace and with ASCII letters lowercased (tokens compare case-insensitively);
    /// empty items are dropped, as the RFC has recipients do.
    func lowercasedListItems() -> [String] {
        utf8.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: true).compactMap { item in
            let trimmed = String(decoding: item, as: UTF8.self).trimmingOptionalWhitespace()
            guard !trimmed.isEmpty else { return nil }
            return String(decoding: trimmed.utf8.map { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") ? $0 | 0x20 : $0 }, as: UTF8.self)
        }
    }
}
