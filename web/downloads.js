// A download is held in the tab's memory until it is saved (a Blob of its parts): past
// this size the page refuses it, before taking a byte when the size is announced, and
// says why and what to use instead.
export const maxDownloadBytes = 512 * 1024 * 1024;

// Why `name` of `size` bytes (-1: not said) is refused, or null when it may come.
export function downloadRefusal(name, size, limit = maxDownloadBytes) {
  if (size <= limit) return null;
  return name + " is " + megabytes(size) + ", over the page's limit of " + megabytes(limit)
    + " for a download (a browser tab holds it in memory until it is saved): copy it with scp or sftp instead";
}

function megabytes(bytes) {
  return (bytes / (1024 * 1024)).toFixed(bytes < 10 * 1024 * 1024 ? 1 : 0) + " MiB";
}
