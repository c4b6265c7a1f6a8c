def fibonacci(n):
    """Return the n-th Fibonacci number."""
    if n < 2:
        
    return fibonacci(n - 1) + fibonacci(n - 2)


if __name__ == "__main__":
    print(fibonacci(10))
