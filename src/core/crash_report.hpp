// Last words of a dying process: on a fatal signal or an uncaught exception,
// the reason and a stack trace go to stderr (and so to the container's log)
// before the process dies as it would have anyway.
#pragma once

namespace mmserve {

void install_crash_reporting();

} // namespace mmserve
