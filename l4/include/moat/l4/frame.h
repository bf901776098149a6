// l4's name for the engine's frame type (moat/dataplane/frame.h): one
// Ethernet frame in a buffer with head- and tailroom, owned by the worker
// processing it for one burst.
#pragma once

#include "moat/dataplane/frame.h"

namespace moat::l4 {
using Frame = dataplane::Frame;
}  // namespace moat::l4
