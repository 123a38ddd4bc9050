// How the host harnesses judge a kernel's output against their float64 direct convolution.
#pragma once
#include <cmath>

// A NaN reference (an x of 0 times an infinite tap) wants NaN, an infinite one the same infinity,
// a finite one agreement within `tolerance`, relative (absolute near 0).
inline bool matches(double ref, float got, double tolerance) {
    if (std::isnan(ref)) return std::isnan(got);
    if (std::isinf(ref)) return double(got) == ref;
    return std::fabs(got - ref) <= tolerance * (1 + std::fabs(ref));
}
