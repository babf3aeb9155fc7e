// A doubly linked list threaded through its elements, for the per-thread
// sweepers that watch many short-lived objects: adding and removing cost no
// allocation and no search. Elements derive from IntrusiveList<T>::Hook; an
// element is on at most one list, and must leave it before it is destroyed.
#pragma once

#include <cstddef>

namespace mmserve {

template <typename T> class IntrusiveList {
public:
  class Hook {
  public:
    bool listed() const { return listed_; }

  private:
    friend class IntrusiveList;
    T* previous_ = nullptr;
    T* next_ = nullptr;
    bool listed_ = false;
  };

  IntrusiveList() = default;
  IntrusiveList(const IntrusiveList&) = delete;
  IntrusiveList& operator=(const IntrusiveList&) = delete;
  // Whatever is still listed is let go (no element points at this list any more).
  ~IntrusiveList() { clear(); }

  bool empty() const { return first_ == nullptr; }
  T* front() const { return first_; }
  static T* next(const T* item) { return hook(item).next_; }

  void push_front(T* item) {
    Hook& added = hook(item);
    added.listed_ = true;
    added.previous_ = nullptr;
    added.next_ = first_;
    if (first_) hook(first_).previous_ = item;
    first_ = item;
  }

  void erase(T* item) {
    Hook& removed = hook(item);
    if (removed.previous_) {
      hook(removed.previous_).next_ = removed.next_;
    } else {
      first_ = removed.next_;
    }
    if (removed.next_) hook(removed.next_).previous_ = removed.previous_;
    removed.listed_ = false;
    removed.previous_ = removed.next_ = nullptr;
  }

  void clear() {
    while (first_)
      erase(first_);
  }

  size_t size() const {
    size_t count = 0;
    for (const T* item = first_; item; item = next(item))
      ++count;
    return count;
  }

private:
  static Hook& hook(T* item) { return *item; }
  static const Hook& hook(const T* item) { return *item; }
  T* first_ = nullptr;
};

} // namespace mmserve
