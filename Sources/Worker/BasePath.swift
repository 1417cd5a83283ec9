/// The prefix every route is served under (ttyd's --base-path), so Cloister can sit behind a
/// reverse proxy's sub-path: `/prefix/`, `/prefix/token`, `/prefix/ws`, `/prefix/xterm.js`.
/// Empty: the routes are at the root.
public struct BasePath: Sendable, Equatable, CustomStringConvertible {
    /// "" or "/segment[/segment…]", without a trailing slash.
    public let prefix: String

    public static let root = BasePath(checked: "")

    private init(checked prefix: String) { self.prefix = prefix }

    public struct Invalid: Error, CustomStringConvertible {
        public var description: String
    }

    /// "/" and "" are the root. A prefix starts with "/", has no empty, "." or ".." segment,
    /// and only unreserved URL characters (RFC 3986): it goes into URLs and headers as is.
    public init(_ text: String) throws(Invalid) {
        var text = text
        while text.count > 1 && text.hasSuffix("/") { text.removeLast() }
        if text.isEmpty || text == "/" {
            self.init(checked: "")
            return
        }
        guard text.hasPrefix("/") else { throw Invalid(description: "\"\(text)\" does not start with /") }
        guard text.count <= 256 else { throw Invalid(description: "longer than 256 characters") }
        for segment in text.dropFirst().split(separator: "/", omittingEmptySubsequences: false) {
            guard !segment.isEmpty, segment != ".", segment != ".." else {
                throw Invalid(description: "\"\(text)\" has an empty, . or .. segment")
            }
            guard segment.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-._~".contains($0)) }) else {
                throw Invalid(description: "\"\(text)\" has characters other than letters, digits and - . _ ~")
            }
        }
        self.init(checked: text)
    }

    public var description: String { prefix.isEmpty ? "/" : prefix }

    /// Where a request's path leads.
    enum Route: Equatable {
        /// A path under the prefix, as the routes know it ("/", "/ws", …).
        case path(String)
        /// The bare prefix: redirected to `prefix/`, query kept.
        case redirect(location: String)
        /// Outside the prefix: not found.
        case outside
    }

    func route(_ uri: String) -> Route {
        let parts = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let path = String(parts.first ?? "")
        guard !prefix.isEmpty else { return path.hasPrefix("/") ? .path(path) : .outside }
        if path == prefix {
            return .redirect(location: prefix + "/" + (parts.count > 1 ? "?" + parts[1] : ""))
        }
        guard path.hasPrefix(prefix + "/") else { return .outside }
        return .path(String(path.dropFirst(prefix.count)))
    }
}
